"""Shared fixtures: a fresh mesh per test on real SQLite files and the in-process bus."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hms import create_app
from hms.gateway.ratelimit import BUCKET
from hms.runtime import Mesh, mesh_of
from tests.natsd import NatsServer
from tests.pg import fresh_postgres_database

DIEGO = {
    "claimant": {"name": "Diego Ramos", "ssnLast4": "1234", "email": "diego@example.org"},
    "employer": "Acme Corp",
    "separationReason": "laid_off",
    "weeksWorked": 40,
    "baseWages": 31200.00,
    "directDeposit": {"routingNumber": "011000015", "accountNumber": "000123456789", "accountType": "checking"},
}


# How long `eventually` waits by default; mutation runs (.ci/mutation.py) shorten it, so that a mutant which stops
# the flow fails its test in seconds rather than at the full timeout.
PATIENCE = float(os.environ.get("HMS_TEST_PATIENCE_S", "10"))


def eventually(check: Callable[[], Any], timeout: float | None = None, interval: float = 0.02) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value at the timeout."""
    timeout = PATIENCE if timeout is None else timeout
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream, for the whole session."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["memory"])
def bus_url(request: pytest.FixtureRequest) -> str:
    """The bus the mesh runs on: memory:// by default; parametrize with "nats" for a real nats-server."""
    if request.param == "nats":
        return str(request.getfixturevalue("nats_server").url)
    return "memory://"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Where the services keep their data: SQLite files (""), or a fresh PostgreSQL database of this test's own."""
    if request.param == "sqlite":
        yield ""
        return
    yield from fresh_postgres_database()


@pytest.fixture
def settings(tmp_path: Path, bus_url: str, database_url: str) -> dict[str, Any]:
    """Test settings: everything under a temporary instance folder, fast polling."""
    return {
        "HMS_BUS_URL": bus_url,
        "HMS_DATABASE_URL": database_url,
        "HMS_INSTANCE_PATH": str(tmp_path / "instance"),
        "HMS_OUTBOX_POLL_S": 0.05,
        "HMS_ACH_POLL_S": 0.05,
        "HMS_ACH_RETRY_BASE_S": 0.05,
        "HMS_ACH_BREAKER_RESET_S": 0.5,
        "HMS_BUS_BACKOFF_S": [0.01, 0.05],
    }


@contextlib.contextmanager
def running(settings: dict[str, Any]) -> Iterator[Flask]:
    """An app on `settings`, its databases migrated and its mesh running; the mesh closed on the way out."""
    app = create_app(settings)
    mesh = mesh_of(app)
    mesh.upgrade()
    mesh.start()
    try:
        yield app
    finally:
        mesh.close()


@pytest.fixture
def app(settings: dict[str, Any]) -> Iterator[Flask]:
    """A migrated, running mesh."""
    with running(settings) as app:
        yield app
        bus = mesh_of(app).bus
        if hasattr(bus, "js"):  # the next test starts with an empty stream, no consumers and no rate-limit counts
            bus._call(bus.js.delete_stream(settings.get("HMS_NATS_STREAM", "HMS_EVENTS")))
            with contextlib.suppress(Exception):  # no bucket: nothing was submitted
                bus._call(bus.js.delete_key_value(BUCKET))


@pytest.fixture
def mesh(app: Flask) -> Mesh:
    return mesh_of(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def token(app: Flask) -> Callable[..., dict[str, str]]:
    """Authorization headers for a subject and role signed by the development identity provider."""

    def make(sub: str = "diego", role: str = "citizen", **claims: Any) -> dict[str, str]:
        return {"Authorization": "Bearer " + app.extensions["hms.auth"].issue(sub, role, **claims)}

    return make
