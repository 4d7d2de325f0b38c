"""What an operator relies on around the mesh: slow clients cannot starve `hms up`; workers expose /metrics."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DIEGO
from tests.e2e.proc import HmsProcess, free_port
from tests.e2e.test_faults import tokens
from tests.natsd import NatsServer


def test_two_hundred_idle_connections_do_not_keep_a_citizen_out(hms_process: Callable[..., HmsProcess]) -> None:
    hms = hms_process()
    hms.start()
    idle = []
    try:
        for _ in range(200):  # connect and say nothing, as a slowloris client does
            idle.append(socket.create_connection(("127.0.0.1", hms.port), timeout=5))
        time.sleep(0.5)
        assert hms.request("GET", "/livez", timeout=5)[0] == 200
        bearer = {"Authorization": "Bearer " + tokens(hms.instance, ["diego"])["diego"]}
        status, body = hms.request("POST", "/claims", DIEGO, headers=bearer, timeout=10)
        assert status == 201 and body["status"] == "approved", body
    finally:
        for s in idle:
            s.close()


def test_a_worker_serves_its_metrics(tmp_path: Path, hms_process: Callable[..., HmsProcess]) -> None:
    nats = NatsServer(tmp_path / "jetstream")
    nats.start()
    try:
        port = free_port()
        worker = hms_process({"HMS_BUS_URL": nats.url, "HMS_METRICS_PORT": str(port)}, ["worker", "ach"])
        worker.start()
        deadline, text = time.monotonic() + 30, ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert 'hms_outbox_backlog{service="ach"} 0.0' in text, text[:2000]
        assert 'hms_breaker_state{breaker="bank",service="ach",state="closed"} 1.0' in text
    finally:
        nats.stop()
