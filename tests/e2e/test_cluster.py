"""The mesh on a 3-node JetStream cluster: R3 stream, the connected server killed mid-load, nothing lost or paid
twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import nats

from hms.bus.nats import NatsBus
from tests.e2e.proc import HmsProcess
from tests.e2e.test_split import FAST, Load, assert_each_paid_once, start_split_mesh
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
        env = {**FAST, "HMS_BUS_URL": ",".join(cluster.urls), "HMS_NATS_REPLICAS": "3"}
        web, *_ = start_split_mesh(hms_process, env)  # returns once both payment workers answer discovery
        assert stream_replicas(cluster.urls[0]) == 3

        load = Load(web, [f"cluster-{i:04d}" for i in range(CLAIMS)])
        load.until(0.4)
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
        load.join(240)
        assert_each_paid_once(web, load.accepted)
        assert stream_replicas(cluster.urls[(connected[0] + 1) % 3]) == 3  # still R3
        # A process configured for one replica that changes the stream's subjects does not lower it.
        NatsBus(",".join(cluster.urls), event_subjects=["claim.>", "payment.>", "refund.>"], replicas=1).close()
        assert stream_replicas(cluster.urls[0]) == 3
    finally:
        cluster.stop()
