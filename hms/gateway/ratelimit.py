"""Per-citizen rate limit on claim submission (sliding window, in this process)."""

from __future__ import annotations

import math
import threading
import time
from collections import deque


class RateLimiter:
    """At most `limit` calls per `window` seconds for each key."""

    def __init__(self, limit: int, window: float = 60.0, clock: object = time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def acquire(self, key: str) -> float:
        """Record a call for `key`; returns 0 when allowed, else the seconds to wait before retrying."""
        now = self.clock()  # type: ignore[operator]
        with self._lock:
            if now >= self._next_sweep:  # forget keys that went quiet, so memory stays bounded
                self._calls = {k: q for k, q in self._calls.items() if q and q[-1] > now - self.window}
                self._next_sweep = now + self.window
            calls = self._calls.setdefault(key, deque())
            while calls and calls[0] <= now - self.window:
                calls.popleft()
            if len(calls) >= self.limit:
                return float(max(0.001, calls[0] + self.window - now))
            calls.append(now)
            return 0.0

    def release(self, key: str) -> None:
        """Give back the latest call of `key`: it did nothing (the mesh could not serve it), so a retry is free."""
        with self._lock:
            calls = self._calls.get(key)
            if calls:
                calls.pop()


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
