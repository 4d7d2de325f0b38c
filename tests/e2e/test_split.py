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
    nats: NatsServer, hms_process: Callable[..., HmsProcess], database_url: str
) -> None:
    run_split_mesh(nats, hms_process, database_url)


# Fast retries and short leases, so that kills and restarts settle within a test's time.
FAST = {
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


def start_split_mesh(
    hms_process: Callable[..., HmsProcess], env: dict[str, str]
) -> tuple[HmsProcess, list[HmsProcess], Callable[[], list[dict[str, Any]]], list[dict[str, Any]]]:
    """`hms up` without ach and two `hms worker ach`, started; a function reading the registry (as admin); and the
    first registry in which all three processes answer."""
    web = hms_process({**env, "HMS_SERVICES": "gateway,svc,metrics,notifier,auth"})
    workers = [hms_process(env, ["worker", "ach"], log=f"ach-{i}.log") for i in (1, 2)]
    web.start()
    for w in workers:
        w.start()
    admin = {"Authorization": "Bearer " + tokens(web.instance, ["root"], "admin")["root"]}

    def registry() -> list[dict[str, Any]]:
        status, body = web.request("GET", "/mesh/services", headers=admin)
        return body["services"] if status == 200 else []

    seen = answering(registry, [web, *workers], 60)
    return web, workers, registry, seen


def answering(
    registry: Callable[[], list[dict[str, Any]]], procs: list[HmsProcess], timeout: float
) -> list[dict[str, Any]]:
    """The first discovery in which every process of `procs` answers (discovery waits 0.5 s for answers: a busy
    process may miss a round). One still silent after `timeout` fails the test, with its exit status and the last
    lines of its log above info."""
    deadline = time.monotonic() + timeout
    while True:
        services = registry()
        answered = {s["pid"] for s in services}
        silent = [p for p in procs if p.proc.pid not in answered]  # type: ignore[union-attr]
        if not silent:
            return services
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not answering discovery after {timeout:.0f}s: "
                + "; ".join(
                    f"{' '.join(p.args)} (pid {p.proc.pid}, exit status {p.proc.poll()}): "  # type: ignore[union-attr]
                    + "\n".join([ln for ln in p.log.read_text().splitlines() if '"level": "info"' not in ln][-20:])
                    for p in silent
                )
            )
        time.sleep(0.2)


class Load:
    """Citizens filing claims from four threads like patient clients (retrying a dropped connection or a 5xx with
    the same Idempotency-Key); what was accepted, and what was refused for good."""

    def __init__(self, web: HmsProcess, citizens: list[str], hold: float = 1.0) -> None:
        """With `hold` below 1, the clients stop after that share of the citizens until `release()`."""
        self.web, self.citizens = web, citizens
        self.bearer = tokens(web.instance, citizens)
        self.accepted: dict[str, str] = {}
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(citizens[i::4], hold), daemon=True) for i in range(4)]
        for t in self.threads:
            t.start()

    def _run(self, part: list[str], hold: float) -> None:
        held = int(len(part) * hold) if hold < 1 else -1  # the first citizen that waits for release()
        for n, citizen in enumerate(part):
            if n == held:
                self._released.wait()
            self._submit(citizen)

    def release(self) -> None:
        self._released.set()

    def _submit(self, citizen: str) -> None:
        headers = {"Authorization": f"Bearer {self.bearer[citizen]}", "Idempotency-Key": f"key-{citizen}"}
        try:
            body = self.web.submit_until_accepted(DIEGO, headers)
        except AssertionError as exc:
            self.failures.append(f"{citizen}: {exc}")
            return
        with self._lock:
            assert self.accepted.setdefault(citizen, body["id"]) == body["id"]

    def until(self, share: float, timeout: float = 120) -> None:
        """Wait until `share` of the claims are accepted (and none refused)."""
        deadline = time.monotonic() + timeout
        while len(self.accepted) < len(self.citizens) * share and not self.failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.failures and len(self.accepted) >= len(self.citizens) * share, (
            len(self.accepted),
            self.failures[:3],
        )

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)
        assert not self.failures and len(self.accepted) == len(self.citizens), self.failures[:3]


def assert_each_paid_once(web: HmsProcess, accepted: dict[str, str], statement: Path | None = None) -> None:
    """Every accepted claim ends paid, with exactly one transfer on the bank's statement (by default the web
    node's), and nothing else there."""
    caseworker = {"Authorization": "Bearer " + tokens(web.instance, ["cw"], "caseworker")["cw"]}

    def count(status: str) -> int:
        code, body = web.request("GET", f"/claims?status={status}&pageSize=1", headers=caseworker)
        return int(body["total"]) if code == 200 else -1

    deadline = time.monotonic() + 120
    while count("paid") != len(accepted) and time.monotonic() < deadline:
        time.sleep(0.25)
    transfers = Counter(t["claimId"] for t in read_statement(statement or web.instance / "sandbox-bank.jsonl"))
    claim_ids = set(accepted.values())
    assert [c for c in claim_ids if transfers[c] != 1] == []  # none lost, none paid twice
    assert set(transfers) == claim_ids  # nothing unexpected
    assert count("paid") == len(accepted)


def run_split_mesh(nats: NatsServer, hms_process: Callable[..., HmsProcess], database_url: str) -> None:
    web, workers, _, services = start_split_mesh(
        hms_process, {**FAST, "HMS_BUS_URL": nats.url, "HMS_DATABASE_URL": database_url}
    )
    seen = {(s["name"], s["pid"]) for s in services}
    pids = {web.proc.pid, *(w.proc.pid for w in workers)}  # type: ignore[union-attr]
    assert {pid for _, pid in seen} == pids, seen
    assert sorted(name for name, _ in seen) == ["ach", "ach", "auth", "metrics", "notifier", "svc"]

    load = Load(web, [f"split-{i:04d}" for i in range(CLAIMS)])
    load.until(0.3)
    workers[0].kill()  # one ACH worker dies mid-load; the other takes its share
    load.until(0.6)
    nats.restart()  # every process loses the broker, then reconnects
    workers[0].start()
    load.join(180)
    assert_each_paid_once(web, load.accepted)

    paid_by = Counter()
    for i, w in enumerate(workers):
        paid_by[i] = w.log.read_text().count('"message": "payment ')
    assert all(paid_by.values()), f"both ACH workers paid some claims: {paid_by}"
    reconcile = web.reconciled()
    assert reconcile.returncode == 0, reconcile.stdout + reconcile.stderr
    assert f"approved {CLAIMS}, payments {CLAIMS}, gaps 0" in reconcile.stdout
