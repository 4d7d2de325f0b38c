"""The event bus: one interface, an in-process engine (blinker) and a NATS engine."""

from __future__ import annotations

from typing import Any

from hms.contracts import ContractError, Contracts

from .base import (
    Bus,
    BusError,
    BusTimeout,
    Event,
    NoResponders,
    Refused,
    ReplyError,
    SubscribeOptions,
    Subscription,
    iso,
    now_iso,
)
from .subjects import SubjectError, check_subject, matches

__all__ = [
    "Bus",
    "BusError",
    "BusTimeout",
    "ContractError",
    "Contracts",
    "Event",
    "NoResponders",
    "Refused",
    "ReplyError",
    "SubjectError",
    "SubscribeOptions",
    "Subscription",
    "check_subject",
    "connect",
    "matches",
    "iso",
    "now_iso",
]


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
