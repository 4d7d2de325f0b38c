"""Per-citizen rate limit on claim submission: a sliding window shared by every gateway on the bus."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable

from hms.bus import Bus, BusError
from hms.bus.base import Expiring

log = logging.getLogger("hms.gateway")
BUCKET = "hms_ratelimit"  # on NATS a key-value bucket; every gateway process counts in it


class RateLimiter:
    """At most `limit` calls per `window` seconds for each key, counted across gateways (Bus.update)."""

    def __init__(self, bus: Bus, limit: int, window: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.bus, self.limit, self.window, self.clock = bus, limit, window, clock
        self._refused = Expiring()  # keys this process refused, until their wait is over

    def acquire(self, key: str) -> float:
        """Record a call for `key`; returns 0 when allowed, else the seconds to wait before retrying."""
        now, wait = self.clock(), [0.0]

        def change(old: bytes | None) -> bytes:
            calls = [t for t in json.loads(old or b"[]") if t > now - self.window]
            full = len(calls) >= self.limit
            wait[0] = max(0.001, (calls[0] if calls else now) + self.window - now) if full else 0.0
            return json.dumps(calls if wait[0] else [*calls, now]).encode()

        try:
            self.bus.update(BUCKET, self._key(key), change, ttl=self.window)
        except BusError as exc:  # the shared count is away for a moment: let the claim through rather than refuse it
            log.warning("rate limit not counted for this submission: %s", exc)
            return 0.0
        if wait[0]:
            self._refused.put((BUCKET, key), True, now + wait[0], now)
        return wait[0]

    def refused_lately(self, key: str) -> bool:
        """Whether this process refused `key` and the wait it gave is not over (another process may have since)."""
        return bool(self._refused.get((BUCKET, key), self.clock()))

    def release(self, key: str) -> None:
        """Give back the latest call of `key`: it did nothing (the mesh could not serve it), so a retry is free."""
        with contextlib.suppress(BusError):  # not given back: the citizen waits a little longer, nothing worse
            self.bus.update(
                BUCKET, self._key(key), lambda old: json.dumps(json.loads(old or b"[]")[:-1]).encode(), ttl=self.window
            )

    @staticmethod
    def _key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()  # any subject, as the characters a bucket key allows


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
