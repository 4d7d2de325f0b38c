"""Contracts for humans (AsyncAPI) and for machines (the compatibility check)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from hms.contracts import HERE
from hms.contracts.asyncapi import asyncapi, snapshot
from hms.contracts.compat import breaking_changes, check

APPROVED = json.loads((HERE / "claim.approved.v1.json").read_text())


def changed(**edits: Any) -> dict[str, Any]:
    new = copy.deepcopy(APPROVED)
    for path, value in edits.items():
        node = new
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return new


@pytest.mark.parametrize(
    ("new", "problem"),
    [
        (changed(required=["claimId", "citizen", "amount", "approvedAt"]), "ruleVersion: no longer required"),
        (changed(properties__amount__minimum=0), "amount: minimum relaxed from 1 to 0"),
        (changed(properties__amount__type="string"), "amount: type widened"),
        (changed(properties__note={"type": "string"}), "note: new field, which consumers refuse"),
        (changed(additionalProperties=True), "unknown fields now allowed"),
        (changed(properties__citizen__maxLength=500), "citizen: maxLength relaxed from 128 to 500"),
    ],
)
def test_changes_that_break_consumers_are_named(new: dict[str, Any], problem: str) -> None:
    assert any(problem in p for p in breaking_changes(APPROVED, new)), breaking_changes(APPROVED, new)


def test_stricter_is_compatible() -> None:
    assert breaking_changes(APPROVED, changed(properties__amount__maximum=5000)) == []
    assert breaking_changes(APPROVED, APPROVED) == []


def test_the_released_lock_matches_the_shipped_contracts() -> None:
    locked = json.loads((HERE / "lock" / "released.json").read_text())
    assert check(locked, snapshot()) == []
    assert set(locked) == set(snapshot())


def test_the_cli_check_fails_on_a_breaking_change(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hms.cli import contracts_check

    locked = snapshot()
    locked["claim.approved.v1"] = changed(
        required=[*APPROVED["required"], "fundCode"], properties__fundCode={"type": "string"}
    )
    (tmp_path / "released.json").write_text(json.dumps(locked))
    result = CliRunner().invoke(contracts_check, ["--against", str(tmp_path / "released.json")])
    assert result.exit_code == 1
    assert "BREAKING claim.approved.v1: fundCode: no longer required" in result.output
    ok = CliRunner().invoke(contracts_check, ["--against", str(HERE / "lock" / "released.json")])
    assert ok.exit_code == 0


def test_asyncapi_describes_every_subject_and_who_sends_and_receives_it() -> None:
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {
        "claim.submitted",
        "claim.approved",
        "claim.denied",
        "payment.sent",
        "payment.failed",
        "svc.claims.submit",
        "ach.accounts.register",
    } <= addresses
    ops = doc["operations"]
    assert ops["svc_publish_claim_approved"]["action"] == "send"
    assert ops["ach_subscribe_claim_approved"]["action"] == "receive"
    assert "reply" in ops["svc_serve_svc_claims_submit"]
    payload = doc["components"]["messages"]["claim_approved_v1"]["payload"]
    assert payload["properties"]["data"]["required"] == APPROVED["required"]
    for op in ops.values():  # every reference resolves
        assert op["channel"]["$ref"].removeprefix("#/channels/") in doc["channels"]
