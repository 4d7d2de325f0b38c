"""Service discovery over the bus, speaking the NATS service protocol ($SRV.PING/INFO/STATS)."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .base import Bus, Event, Subscription, now_iso

API_PREFIX = "$SRV"


@dataclass
class ServiceInfo:
    """What one service instance tells the mesh about itself."""

    name: str
    version: str
    description: str = ""
    publishes: list[str] = field(default_factory=list)
    subscribes: list[str] = field(default_factory=list)
    serves: list[str] = field(default_factory=list)
    health: Callable[[], dict[str, Any]] = lambda: {"status": "ok"}
    breakers: Callable[[], dict[str, str]] = dict
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:22])
    started: str = field(default_factory=now_iso)


class Registration:
    """Answers discovery requests for one service instance until closed."""

    def __init__(self, bus: Bus, info: ServiceInfo) -> None:
        self.bus, self.info = bus, info
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        subjects = []
        for verb in ("PING", "INFO", "STATS"):
            subjects += [
                f"{API_PREFIX}.{verb}",
                f"{API_PREFIX}.{verb}.{info.name}",
                f"{API_PREFIX}.{verb}.{info.name}.{info.id}",
            ]
        self._subs: list[Subscription] = [bus.subscribe(s, self._answer) for s in subjects]

    def count(self, subject: str) -> None:
        """Count one request served on `subject` by this instance (shown in $SRV.STATS)."""
        with self._lock:
            self.requests[subject] = self.requests.get(subject, 0) + 1

    def _answer(self, event: Event) -> dict[str, Any]:
        verb = event.subject.split(".")[1]
        info = self.info
        base = {"name": info.name, "id": info.id, "version": info.version, "metadata": self._metadata()}
        if verb == "PING":
            return {"type": "io.nats.micro.v1.ping_response", **base}
        if verb == "INFO":
            return {
                "type": "io.nats.micro.v1.info_response",
                **base,
                "description": info.description,
                "endpoints": [{"name": s, "subject": s, "queue_group": info.name} for s in info.serves],
                "hms": self.describe(),
            }
        return {
            "type": "io.nats.micro.v1.stats_response",
            **base,
            "started": info.started,
            "endpoints": [{"name": s, "subject": s, "num_requests": self.requests.get(s, 0)} for s in info.serves],
            "hms": self.describe(),
        }

    def _metadata(self) -> dict[str, str]:
        # The micro protocol allows only string metadata; the structured view rides under "hms".
        return {
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "publishes": ",".join(self.info.publishes),
            "subscribes": ",".join(self.info.subscribes),
        }

    def describe(self) -> dict[str, Any]:
        """The structured view of this instance that `hms mesh status` shows."""
        info = self.info
        try:
            health = info.health()
        except Exception as exc:  # health reports failure instead of raising
            health = {"status": "failing", "error": f"{type(exc).__name__}: {exc}"}
        return {
            "name": info.name,
            "id": info.id,
            "version": info.version,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "publishes": info.publishes,
            "subscribes": info.subscribes,
            "serves": info.serves,
            "health": health,
            "breakers": info.breakers(),
            "started": info.started,
        }

    def close(self) -> None:
        """Stop answering."""
        for s in self._subs:
            s.unsubscribe()


def discover(bus: Bus, timeout: float = 0.5) -> list[dict[str, Any]]:
    """Every service instance that answers `$SRV.INFO` within `timeout`, sorted by name."""
    replies = bus.request_many(f"{API_PREFIX}.INFO", {}, timeout)
    services = [r["hms"] if isinstance(r, dict) and "hms" in r else r for r in replies]
    return sorted(services, key=lambda s: (s.get("name", ""), s.get("host", ""), s.get("pid", 0)))
