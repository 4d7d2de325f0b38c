"""The transactional outbox: events written in the same transaction as the state they announce."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Integer, MetaData, String, Table
from sqlalchemy.orm import Session

from hms.bus import Event
from hms.contracts import Contracts

from .database import UtcDateTime, utcnow


def outbox_table(metadata: MetaData) -> Table:
    """The outbox table of a service's database (migrations/messaging)."""
    return Table(
        "outbox",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("subject", String(200), nullable=False),
        Column("data", JSON, nullable=False),
        Column("source", String(200), nullable=False),
        Column("time", String(40), nullable=False),
        Column("traceparent", String(128)),
        Column("created_at", UtcDateTime(), nullable=False),
        sqlite_autoincrement=True,  # never reuse a sequence number after the relay deletes rows
    )


class Outbox:
    """Writes a service's events into its outbox; the relay (relay.py) sends them."""

    def __init__(self, service: str, table: Table, contracts: Contracts | None) -> None:
        self.service, self.table, self.contracts = service, table, contracts
        self.source = f"/hms/{service}"
        self._insert = table.insert()  # built once: parameters, not values baked into a new statement each time

    def emit(self, session: Session, subject: str, data: dict[str, Any], *, traceparent: str | None = None) -> str:
        """Put an event in the outbox inside `session`'s transaction; returns its id."""
        ev = Event.create(subject, data, source=self.source, traceparent=traceparent)
        if self.contracts is not None:
            self.contracts.validate(subject, data, ev.version)  # fail inside the transaction, not in the relay
        session.execute(
            self._insert,
            {
                "event_id": ev.id,
                "subject": subject,
                "data": data,
                "source": ev.source,
                "time": ev.time,
                "traceparent": traceparent,
                "created_at": utcnow(),
            },
        )
        session.info["outbox"] = True  # the store wakes the relay after the commit
        return ev.id
