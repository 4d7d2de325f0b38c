"""A service's face, declared in one place: its tables, consumers, request handlers, workers, health, breakers.

    service = Service("ach", Base.metadata, version="0.1.0", description="Payments",
                      publishes=["payment.sent", "payment.failed"])

    @service.implementation
    class Ach:
        def __init__(self, config, units): ...

        @service.request("ach.accounts.register")
        def register_account(self, uow, event): ...

        @service.consumer("claim.approved", name="on_claim_approved")
        def record_payment(self, uow, event): ...

        @service.worker("payments", poll="HMS_ACH_POLL_S")
        def pay_due(self, stop): ...

The runtime (host.py) makes one instance per process that hosts the service, opens a unit of work for each
request and each delivery, and hands it to the handler with the event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import MetaData

from .store import messaging_tables

F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


@dataclass(frozen=True)
class Consumer:
    subject: str
    name: str  # stable: keys the inbox, the dead letters and the NATS durable
    method: str


@dataclass(frozen=True)
class Worker:
    name: str
    method: str
    poll: str  # the configuration key of its idle poll interval (seconds)


@dataclass
class Service:
    """The declaration of one service; `hms.runtime.host` brings it to life."""

    name: str
    metadata: MetaData
    version: str = "0.1.0"
    description: str = ""
    publishes: list[str] = field(default_factory=list)
    implementation_class: type | None = None
    requests: dict[str, str] = field(default_factory=dict)  # subject -> method
    consumers: list[Consumer] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    chores: list[str] = field(default_factory=list)
    health_method: str | None = None
    breakers_method: str | None = None

    def __post_init__(self) -> None:
        messaging_tables(self.metadata)

    def implementation(self, cls: C) -> C:
        """Class decorator: the class whose instance, made as `cls(config, units)`, serves this service."""
        self.implementation_class = cls
        return cls

    def request(self, subject: str) -> Callable[[F], F]:
        """Method decorator: `method(uow, event) -> reply` answers requests on `subject` (one member of the
        service's queue group answers each)."""
        return self._mark(lambda fn: self.requests.__setitem__(subject, fn.__name__))

    def consumer(self, subject: str, *, name: str) -> Callable[[F], F]:
        """Method decorator: `method(uow, event)` handles each event on `subject` once (the inbox), as consumer
        `name`. The name is persistent (inbox rows, dead letters, the NATS durable): never rename it."""
        if any(c.name == name for c in self.consumers):
            raise ValueError(f"{self.name}: consumer name {name!r} declared twice")
        return self._mark(lambda fn: self.consumers.append(Consumer(subject, name, fn.__name__)))

    def worker(self, name: str, *, poll: str) -> Callable[[F], F]:
        """Method decorator: `method(stop) -> int` runs in a background thread while the mesh runs, again at
        once while it returns a positive count of work done, else after the `poll` setting's seconds or when a
        unit of work calls `uow.wake(name)`."""
        return self._mark(lambda fn: self.workers.append(Worker(name, fn.__name__, poll)))

    def housekeeping(self, fn: F) -> F:
        """Method decorator: `method()` runs about once an hour (pruning old records)."""
        self.chores.append(fn.__name__)
        return fn

    def health(self, fn: F) -> F:
        """Method decorator: `method() -> dict` adds to the service's health in discovery."""
        self.health_method = fn.__name__
        return fn

    def breakers(self, fn: F) -> F:
        """Method decorator: `method() -> {name: state}` of the service's circuit breakers."""
        self.breakers_method = fn.__name__
        return fn

    @property
    def serves(self) -> Iterable[str]:
        """The request subjects this service answers."""
        return self.requests.keys()

    @staticmethod
    def _mark(record: Callable[[Any], None]) -> Callable[[F], F]:
        def decorate(fn: F) -> F:
            record(fn)
            return fn

        return decorate
