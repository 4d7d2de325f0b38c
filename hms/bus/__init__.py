"""The event bus: one interface and envelope, an in-process engine (blinker) and a NATS engine, one delivery policy.

Also what travels with messages on it: service tokens and the mesh policy (guard), discovery ($SRV),
tracing and telemetry. What hosts services on the bus (databases, outbox, inbox) is `hms.runtime`.
"""

from __future__ import annotations

from typing import Any

from hms.contracts import ContractError, Contracts

from .base import (
    DEFAULT_BACKOFF,
    Bus,
    BusError,
    BusTimeout,
    Event,
    NoResponders,
    Refused,
    Reply,
    ReplyError,
    SubscribeOptions,
    Subscription,
    Unverifiable,
    iso,
    now_iso,
)
from .subjects import SubjectError, check_subject, matches

__all__ = [
    "DEFAULT_BACKOFF",
    "BUS_EXTENSION",
    "Bus",
    "BusError",
    "BusTimeout",
    "ContractError",
    "Contracts",
    "Event",
    "NoResponders",
    "Refused",
    "Reply",
    "Unverifiable",
    "ReplyError",
    "SubjectError",
    "SubscribeOptions",
    "Subscription",
    "check_subject",
    "bus_of",
    "connect",
    "matches",
    "iso",
    "now_iso",
]


BUS_EXTENSION = "hms.bus"


def bus_of(app: Any) -> Bus:
    """The bus a Flask app's gateway talks through (its requests carry the gateway's service token)."""
    return app.extensions[BUS_EXTENSION]  # type: ignore[no-any-return]


def connect(url: str, contracts: Contracts | None = None, **nats_options: Any) -> Bus:
    """Open the bus named by `url`: `memory://`, or `nats://host:port` (options go to the NATS engine)."""
    if url.startswith("memory://"):
        from .memory import MemoryBus

        return MemoryBus(contracts)
    if url.startswith(("nats://", "tls://")):
        try:
            from .nats import NatsBus
        except ImportError as exc:
            raise BusError(f"HMS_BUS_URL: {url} needs nats-py: pip install 'hms[nats]' ({exc})") from None
        return NatsBus(url, contracts, **nats_options)
    raise BusError(f"HMS_BUS_URL: expected memory:// or nats://host:port[,nats://host:port…], got {url!r}")
