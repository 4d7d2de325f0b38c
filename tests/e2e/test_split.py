"""The mesh split over processes: nats-server, `hms up` without ach, two `hms worker ach`."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hms.ach.bank import read_statement
from tests.conftest import DIEGO
from tests.e2e.proc import HmsProcess
from tests.e2e.test_faults import tokens
from tests.natsd import NatsServer

CLAIMS = 200


def test_split_mesh_survives_a_killed_worker_and_a_broker_restart(
    tmp_path: Path, hms_process: Callable[..., HmsProcess], database_url: str
) -> None:
    nats = NatsServer(tmp_path / "jetstream")
    nats.start()
    try:
        run_split_mesh(nats, hms_process, database_url)
    finally:
        nats.stop()


def run_split_mesh(nats: NatsServer, hms_process: Callable[..., HmsProcess], database_url: str) -> None:
    env = {
        "HMS_BUS_URL": nats.url,
        "HMS_DATABASE_URL": database_url,
        "HMS_ACH_SANDBOX_LATENCY_MS": "5",
        "HMS_ACH_SEND_LEASE_S": "2",
        "HMS_ACH_RETRY_BASE_S": "0.05",
        "HMS_ACH_RETRY_MAX_S": "0.5",
        "HMS_ACH_BREAKER_RESET_S": "0.5",
        "HMS_OUTBOX_POLL_S": "0.1",
        "HMS_ACH_POLL_S": "0.05",
        "HMS_BUS_BACKOFF_S": "0.05,0.2",
        "HMS_BUS_MAX_DELIVER": "20",
        "HMS_NATS_ACK_WAIT_S": "5",
    }
    web = hms_process({**env, "HMS_SERVICES": "gateway,svc,metrics,notifier,auth"})
    workers = [hms_process(env, ["worker", "ach"], log=f"ach-{i}.log") for i in (1, 2)]
    web.start()
    for w in workers:
        w.start()
    instance = web.instance
    admin = {"Authorization": "Bearer " + tokens(instance, ["root"], "admin")["root"]}

    def registry() -> list[dict[str, Any]]:
        status, body = web.request("GET", "/mesh/services", headers=admin)
        return body["services"] if status == 200 else []

    deadline = time.monotonic() + 60
    while sum(s["name"] == "ach" for s in registry()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = {(s["name"], s["pid"]) for s in registry()}
    pids = {web.proc.pid, *(w.proc.pid for w in workers)}  # type: ignore[union-attr]
    assert {pid for _, pid in seen} == pids, seen
    assert sorted(name for name, _ in seen) == ["ach", "ach", "auth", "metrics", "notifier", "svc"]

    citizens = [f"split-{i:04d}" for i in range(CLAIMS)]
    bearer = tokens(instance, citizens)
    accepted: dict[str, str] = {}
    lock = threading.Lock()

    def submit(citizen: str) -> None:
        headers = {"Authorization": f"Bearer {bearer[citizen]}", "Idempotency-Key": f"key-{citizen}"}
        body = web.submit_until_accepted(DIEGO, headers)
        with lock:
            assert accepted.setdefault(citizen, body["id"]) == body["id"]

    load = [threading.Thread(target=lambda part=citizens[i::4]: [submit(c) for c in part]) for i in range(4)]
    for t in load:
        t.start()
    while len(accepted) < CLAIMS * 0.3:
        time.sleep(0.01)
    workers[0].kill()  # one ACH worker dies mid-load; the other takes its share
    while len(accepted) < CLAIMS * 0.6:
        time.sleep(0.01)
    nats.restart()  # every process loses the broker, then reconnects
    workers[0].start()
    for t in load:
        t.join(180)
    assert len(accepted) == CLAIMS

    caseworker = {"Authorization": "Bearer " + tokens(instance, ["cw"], "caseworker")["cw"]}

    def count(status: str) -> int:
        code, body = web.request("GET", f"/claims?status={status}&pageSize=1", headers=caseworker)
        return int(body["total"]) if code == 200 else -1

    deadline = time.monotonic() + 120
    while count("paid") != CLAIMS and time.monotonic() < deadline:
        time.sleep(0.25)
    transfers = Counter(t["claimId"] for t in read_statement(instance / "sandbox-bank.jsonl"))
    claim_ids = set(accepted.values())
    assert [c for c in claim_ids if transfers[c] != 1] == []  # none lost, none paid twice
    assert set(transfers) == claim_ids  # nothing unexpected
    assert count("paid") == CLAIMS

    paid_by = Counter()
    for i, w in enumerate(workers):
        paid_by[i] = w.log.read_text().count('"message": "payment ')
    assert all(paid_by.values()), f"both ACH workers paid some claims: {paid_by}"
    reconcile = web.cli("audit", "reconcile", "--strict")
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert f"approved {CLAIMS}, payments {CLAIMS}, gaps 0" in reconcile.stdout
