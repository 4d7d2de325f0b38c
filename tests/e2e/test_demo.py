"""`hms demo` against a real `hms up`: claims go in, the payout report comes out."""

from __future__ import annotations

import re
from collections.abc import Callable

from tests.e2e.proc import HmsProcess


def test_demo_drives_claims_and_prints_the_report(hms_process: Callable[..., HmsProcess]) -> None:
    hms = hms_process({"HMS_OUTBOX_POLL_S": "0.1", "HMS_ACH_POLL_S": "0.05"})
    hms.start()
    result = hms.cli("demo", "--claims", "20", "--seed", "7", "--url", f"http://127.0.0.1:{hms.port}")
    assert result.returncode == 0, result.stdout + result.stderr
    approved = int(re.search(r"(\d+) approved", result.stdout).group(1))  # type: ignore[union-attr]
    denied = int(re.search(r"(\d+) denied", result.stdout).group(1))  # type: ignore[union-attr]
    assert approved + denied == 20 and approved > 0 and denied > 0
    assert re.search(rf"^all\s+{approved}\s", result.stdout, re.M), result.stdout


def test_demo_says_when_no_mesh_runs(hms_process: Callable[..., HmsProcess]) -> None:
    hms = hms_process()
    result = hms.cli("demo", "--claims", "1", "--url", "http://127.0.0.1:9")
    assert result.returncode == 1 and "no mesh answers" in result.stderr
