"""The mesh on a 3-node JetStream cluster: R3 stream, the connected server killed mid-load, nothing lost or paid
twice."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nats

from hms.ach.bank import read_statement
from hms.bus.nats import NatsBus
from tests.conftest import DIEGO
from tests.e2e.proc import HmsProcess
from tests.e2e.test_faults import tokens
from tests.natsd import NatsCluster

CLAIMS = 120


def stream_replicas(url: str) -> int:
    async def ask() -> int:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().stream_info("HMS_EVENTS")
            return int(info.config.num_replicas or 1)
        finally:
            await nc.close()

    return asyncio.run(ask())


def test_a_killed_cluster_node_loses_and_duplicates_nothing(
    tmp_path: Path, hms_process: Callable[..., HmsProcess]
) -> None:
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        env = {
            "HMS_BUS_URL": ",".join(cluster.urls),
            "HMS_NATS_REPLICAS": "3",
            "HMS_ACH_SANDBOX_LATENCY_MS": "5",
            "HMS_ACH_SEND_LEASE_S": "2",
            "HMS_ACH_RETRY_BASE_S": "0.05",
            "HMS_ACH_RETRY_MAX_S": "0.5",
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
        assert stream_replicas(cluster.urls[0]) == 3
        admin = {"Authorization": "Bearer " + tokens(web.instance, ["root"], "admin")["root"]}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # both payment workers answer discovery before the load starts
            status, body = web.request("GET", "/mesh/services", headers=admin)
            if status == 200 and sum(s["name"] == "ach" for s in body["services"]) == 2:
                break
            time.sleep(0.2)

        citizens = [f"cluster-{i:04d}" for i in range(CLAIMS)]
        bearer = tokens(web.instance, citizens)
        accepted: dict[str, str] = {}
        failures: list[str] = []
        lock = threading.Lock()

        def submit(citizen: str) -> None:
            headers = {"Authorization": f"Bearer {bearer[citizen]}", "Idempotency-Key": f"key-{citizen}"}
            try:
                body = web.submit_until_accepted(DIEGO, headers)
            except AssertionError as exc:
                failures.append(f"{citizen}: {exc}")
                return
            with lock:
                assert accepted.setdefault(citizen, body["id"]) == body["id"]

        load = [threading.Thread(target=lambda part=citizens[i::4]: [submit(c) for c in part]) for i in range(4)]
        for t in load:
            t.start()
        deadline = time.monotonic() + 120
        while len(accepted) < CLAIMS * 0.4 and not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not failures and len(accepted) >= CLAIMS * 0.4, (len(accepted), failures[:3])
        # The server the web process is connected to dies mid-load; its clients move to the others.
        connected = [
            n
            for n in cluster.running()
            if any(
                str(c.get("name", "")).startswith("hms:gateway")
                for c in cluster.monitor(n, "connz").get("connections", [])
            )  # type: ignore[union-attr]
        ]
        assert len(connected) == 1, connected
        cluster.kill(connected[0])
        time.sleep(2)
        cluster.start(connected[0])
        for t in load:
            t.join(240)
        assert not failures and len(accepted) == CLAIMS, failures[:3]

        caseworker = {"Authorization": "Bearer " + tokens(web.instance, ["cw"], "caseworker")["cw"]}

        def count(status: str) -> int:
            code, body = web.request("GET", f"/claims?status={status}&pageSize=1", headers=caseworker)
            return int(body["total"]) if code == 200 else -1

        deadline = time.monotonic() + 120
        while count("paid") != CLAIMS and time.monotonic() < deadline:
            time.sleep(0.25)
        transfers = Counter(t["claimId"] for t in read_statement(web.instance / "sandbox-bank.jsonl"))
        claim_ids = set(accepted.values())
        assert [c for c in claim_ids if transfers[c] != 1] == []  # none lost, none paid twice
        assert set(transfers) == claim_ids and count("paid") == CLAIMS
        assert stream_replicas(cluster.urls[(connected[0] + 1) % 3]) == 3  # still R3
        # A process configured for one replica that changes the stream's subjects does not lower it.
        NatsBus(",".join(cluster.urls), event_subjects=["claim.>", "payment.>", "refund.>"], replicas=1).close()
        assert stream_replicas(cluster.urls[0]) == 3
    finally:
        cluster.stop()
