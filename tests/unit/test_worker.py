"""BackgroundWorker: its first step waits for the delay given, and a stop during that wait runs none."""

from __future__ import annotations

import threading
import time

from hms.runtime.worker import BackgroundWorker
from tests.conftest import eventually


def test_the_first_step_comes_after_the_delay_and_a_stop_before_it_runs_none() -> None:
    steps: list[float] = []

    def step(_stop: threading.Event) -> int:
        steps.append(time.monotonic())
        return 0

    worker = BackgroundWorker("test", step, poll=60, delay=0.3)
    started = time.monotonic()
    worker.start()
    eventually(lambda: steps, 5)
    worker.stop()
    assert len(steps) == 1 and steps[0] - started >= 0.3

    waiting = BackgroundWorker("test", step, poll=60, delay=30)
    waiting.start()
    begun = time.monotonic()
    waiting.stop()  # ends the wait at once
    assert time.monotonic() - begun < 5 and len(steps) == 1
