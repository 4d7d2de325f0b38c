"""A service's background worker: a thread that runs a step again while it finds work, else waits to be woken."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("hms.runtime")


class BackgroundWorker:
    """Runs `step(stop)` in a thread of its own; a step returns how much it did (0: wait `poll` or a wake). The first
    step comes `delay` seconds after start (or at a wake)."""

    def __init__(self, name: str, step: Callable[[threading.Event], int], poll: float, delay: float = 0.0) -> None:
        self.name, self.step, self.poll, self.delay = name, step, poll, delay
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """There is work now (a unit of work committed some)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"hms-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the current step; unfinished work stays recorded and resumes on the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._stop.clear()  # the thread is gone; a step may still be called directly

    def _run(self) -> None:
        if self.delay:
            self._wake.wait(self.delay)
            self._wake.clear()
        while not self._stop.is_set():
            try:
                busy = self.step(self._stop)
            except Exception:
                log.exception("%s failed; retrying", self.name)
                busy = 0
            if not busy:
                self._wake.wait(self.poll)
                self._wake.clear()
