"""What an operator relies on around the mesh: slow clients cannot starve `hms up`; workers expose /metrics."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client import generate_latest

from hms import create_app
from hms.runtime import mesh_of
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


def test_the_breakers_are_in_the_metrics_before_the_mesh_opens(tmp_path: Path, nats: NatsServer) -> None:
    """`hms worker` serves /metrics before its mesh opens: the first scrape already has every breaker's state."""
    settings = {"HMS_INSTANCE_PATH": str(tmp_path / "instance"), "HMS_BUS_URL": nats.url, "HMS_SERVICES": ["ach"]}
    app = create_app(settings)
    mesh = mesh_of(app)
    try:
        mesh.upgrade()
        text = generate_latest(mesh.telemetry.registry).decode()
        assert 'hms_breaker_state{breaker="bank",service="ach",state="closed"} 1.0' in text
    finally:
        mesh.close()


def test_a_worker_serves_its_metrics(nats: NatsServer, hms_process: Callable[..., HmsProcess]) -> None:
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


def test_mesh_status_shows_the_running_servers_breaker_on_memory(
    tmp_path: Path, hms_process: Callable[..., HmsProcess]
) -> None:
    outage = tmp_path / "bank-down"
    outage.touch()
    env = {"HMS_ACH_SANDBOX_OUTAGE_FILE": str(outage), "HMS_ACH_BREAKER_FAIL_MAX": "1", "HMS_ACH_POLL_S": "0.05"}
    hms = hms_process(env)
    hms.start()
    bearer = {"Authorization": "Bearer " + tokens(hms.instance, ["diego"])["diego"]}
    assert hms.request("POST", "/claims", DIEGO, headers=bearer)[0] == 201  # its payment meets the bank down
    cli_env = {**hms.env, **env}

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hms.cli", "mesh", "status"], env=cli_env, capture_output=True, text=True, timeout=60
        )

    deadline, shown = time.monotonic() + 30, status()
    while "bank=open" not in shown.stdout and time.monotonic() < deadline:
        time.sleep(0.2)
        shown = status()
    assert shown.returncode == 0, shown.stderr
    assert "bank=open" in shown.stdout  # the server's breaker; a registry of the CLI's own said bank=closed
    assert f"{socket.gethostname()}:{hms.proc.pid}" in shown.stdout  # type: ignore[union-attr]


def test_sigterm_stops_hms_up_cleanly(hms_process: Callable[..., HmsProcess]) -> None:
    hms = hms_process()
    hms.start()
    assert (hms.instance / "hms.url").read_text().strip() == f"http://127.0.0.1:{hms.port}"
    assert hms.proc is not None
    hms.proc.terminate()
    assert hms.proc.wait(20) == 0
    assert not (hms.instance / "hms.url").exists()
    assert '"message": "mesh closed"' in hms.log.read_text()
