from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.proc import HmsProcess


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


def pytest_collection_modifyitems(items: list[Any]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
