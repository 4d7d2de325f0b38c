"""Crashes, a flaky bank and a bank outage against a real `hms up`: nothing lost, nothing paid twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hms.ach.bank import read_statement
from hms.auth.keys import IdentityProvider
from tests.conftest import DIEGO
from tests.e2e.proc import HmsProcess

CLAIMS = 300


def tokens(instance: Path, subs: list[str], role: str = "citizen") -> dict[str, str]:
    idp = IdentityProvider(str(instance / "jwt-private.pem"), str(instance / "jwks.json"), "hms-dev", "hms")
    return {sub: idp.issue(sub, role, ttl=3600) for sub in subs}


def test_kills_flaky_bank_and_outage_lose_nothing_and_pay_nothing_twice(
    tmp_path: Path, hms_process: Callable[..., HmsProcess], database_url: str
) -> None:
    outage = tmp_path / "bank-down"
    hms = hms_process(
        env={
            "HMS_DATABASE_URL": database_url,
            "HMS_ACH_SANDBOX_FAIL_RATE": "0.2",
            "HMS_ACH_SANDBOX_LATENCY_MS": "5",
            "HMS_ACH_SANDBOX_OUTAGE_FILE": str(outage),
            "HMS_ACH_SEND_LEASE_S": "1",
            "HMS_ACH_BREAKER_RESET_S": "0.5",
            "HMS_ACH_RETRY_BASE_S": "0.05",
            "HMS_ACH_RETRY_MAX_S": "0.5",
            "HMS_OUTBOX_POLL_S": "0.1",
            "HMS_ACH_POLL_S": "0.05",
            "HMS_BUS_BACKOFF_S": "0.05,0.2",
            "HMS_BUS_MAX_DELIVER": "20",
        }
    )
    instance = hms.instance
    hms.start()
    citizens = [f"citizen-{i:04d}" for i in range(CLAIMS)]
    bearer = tokens(instance, citizens)
    accepted: dict[str, str] = {}  # citizen -> claim id, the citizen's view of what was accepted
    lock = threading.Lock()
    down = threading.Event()

    def submit(citizen: str) -> None:
        headers = {"Authorization": f"Bearer {bearer[citizen]}", "Idempotency-Key": f"key-{citizen}"}
        body = hms.submit_until_accepted(DIEGO, headers)
        assert body["status"] == "approved", body
        with lock:
            assert accepted.setdefault(citizen, body["id"]) == body["id"], "a retry made a second claim"

    def load(part: list[str]) -> None:
        for citizen in part:
            submit(citizen)

    workers = [threading.Thread(target=load, args=(citizens[i::4],)) for i in range(4)]
    for w in workers:
        w.start()
    # Kill the process three times mid-load (submits, relays and bank calls are all under way),
    # and take the bank down for a while after the second restart.
    for kill_at in (CLAIMS * 0.2, CLAIMS * 0.45, CLAIMS * 0.7):
        while len(accepted) < kill_at and any(w.is_alive() for w in workers):
            time.sleep(0.01)
        hms.kill()
        time.sleep(0.2)
        hms.start()
        if hms.kills == 2:
            outage.touch()
            down.set()
            threading.Timer(3.0, outage.unlink).start()
    for w in workers:
        w.join(150)
    assert len(accepted) == CLAIMS

    caseworker = tokens(instance, ["cw"], "caseworker")["cw"]

    def unsettled() -> int:
        status, body = hms.request(
            "GET", "/claims?status=approved&pageSize=1", headers={"Authorization": f"Bearer {caseworker}"}
        )
        assert status == 200, body
        return int(body["total"])

    deadline = time.monotonic() + 90
    while unsettled() and time.monotonic() < deadline:
        time.sleep(0.25)

    status, listing = hms.request(
        "GET", "/claims?pageSize=200&page=1", headers={"Authorization": f"Bearer {caseworker}"}
    )
    pages = [listing] + [
        hms.request("GET", f"/claims?pageSize=200&page={p}", headers={"Authorization": f"Bearer {caseworker}"})[1]
        for p in range(2, listing["total"] // 200 + 2)
    ]
    statuses = Counter(item["status"] for page in pages for item in page["items"])
    transfers = Counter(t["claimId"] for t in read_statement(instance / "sandbox-bank.jsonl"))
    claim_ids = set(accepted.values())

    lost = [c for c in claim_ids if transfers[c] == 0]
    doubled = [c for c, n in transfers.items() if n > 1]
    unexpected = [c for c in transfers if c not in claim_ids]
    assert (len(lost), len(doubled), len(unexpected)) == (0, 0, 0), (lost[:5], doubled[:5], unexpected[:5])
    assert statuses == {"paid": CLAIMS}, statuses
    assert hms.kills == 3 and down.is_set()

    reconcile = hms.reconciled()
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert f"approved {CLAIMS}, payments {CLAIMS}, gaps 0, in flight 0" in reconcile.stdout
    log = (instance / "hms.log").read_text()
    assert "sandbox bank is down" in log and "refused the transfer" in log  # the faults really happened
