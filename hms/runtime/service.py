"""A service's face, declared in one place: its tables, request handlers, consumers, workers, health, breakers.

Each service file ends with its declaration, one table of what the service is on the bus:

    service = Service(
        "ach",
        Base.metadata,
        Ach,                                              # made once per process: Ach(config, units)
        publishes=["payment.sent", "payment.failed"],
        requests={"ach.accounts.register": Ach.register_account},     # method(uow, event) -> reply
        consumers=[Consumer("claim.approved", Ach.record_payment, name="on_claim_approved")],
        workers=[Worker("payments", Ach.pay_due, poll="HMS_ACH_POLL_S")],
        breakers=Ach.breakers,
    )

The runtime (host.py) makes the instance, opens a unit of work for each request and each delivery and hands it
to the handler with the event. (A table rather than decorators on the methods: mutmut, which tests the money
path, leaves decorated functions alone.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import MetaData

from .store import messaging_tables

Method = Callable[..., Any]


@dataclass(frozen=True)
class Consumer:
    """`handler(self, uow, event)` runs once per event id on `subject`, as consumer `name`.

    The name is persistent — it keys the inbox rows, the dead letters and the NATS durable (`<service>.<name>`) —
    so it is written out, never derived from the method: renaming the method changes nothing.
    """

    subject: str
    handler: Method
    name: str


@dataclass(frozen=True)
class Worker:
    """`step(self, stop) -> int` runs in a background thread while the mesh runs: again at once while it reports
    work done, else after the `poll` setting's seconds or when a unit of work calls `uow.wake(name)`."""

    name: str
    step: Method
    poll: str  # the configuration key of the idle poll interval


@dataclass
class Service:
    """The declaration of one service; `hms.runtime.host.Mesh.host` brings it to life."""

    name: str
    metadata: MetaData
    implementation: Callable[[Mapping[str, Any], Any], Any]  # (config, units) -> the instance
    version: str = "0.1.0"
    description: str = ""
    publishes: list[str] = field(default_factory=list)
    requests: dict[str, Method] = field(default_factory=dict)  # subject -> method(uow, event) -> reply
    consumers: list[Consumer] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    chores: list[Method] = field(default_factory=list)  # method(), about once an hour (pruning)
    health: Method | None = None  # method() -> dict, added to the service's health in discovery
    breakers: Method | None = None  # method() -> {name: state}

    def __post_init__(self) -> None:
        names = [c.name for c in self.consumers]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"{self.name}: consumer name {duplicated[0]!r} declared twice")
        messaging_tables(self.metadata)
