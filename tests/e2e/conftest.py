from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.proc import HmsProcess
from tests.natsd import NatsServer
from tests.pg import fresh_postgres_database


@pytest.fixture
def hms_process(tmp_path: Path) -> Iterator[Callable[..., HmsProcess]]:
    """Make `hms` processes that are always stopped when the test ends, passed or not."""
    made: list[HmsProcess] = []

    def make(
        env: dict[str, str] | None = None, args: list[str] | None = None, name: str = "instance", log: str = "hms.log"
    ) -> HmsProcess:
        proc = HmsProcess(tmp_path / name, env, args, log)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.stop()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own (it may stop or restart it), stopped when the test ends."""
    server = NatsServer(tmp_path / "jetstream")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own, for several processes to share (CI: never skipped)."""
    yield from fresh_postgres_database()


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
