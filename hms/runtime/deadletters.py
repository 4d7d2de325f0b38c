"""Dead letters: events a consumer gave up on, kept with their error until an operator replays them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, Text, UniqueConstraint, select, update

from hms.bus import Event

from .database import UtcDateTime, utcnow

log = logging.getLogger("hms.runtime")


class NotReplayable(LookupError):
    """No such dead letter, or its consumer does not run in this process."""


def dead_letters_table(metadata: MetaData) -> Table:
    """The dead-letter table of a service's database (migrations/messaging)."""
    return Table(
        "dead_letters",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False),
        Column("consumer", String(200), nullable=False),
        Column("subject", String(200), nullable=False),
        Column("envelope", JSON, nullable=False),
        Column("error", Text, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("failed_at", UtcDateTime(), nullable=False),
        Column("replayed_at", UtcDateTime()),
        UniqueConstraint("event_id", "consumer", name="uq_dead_letters_event_consumer"),
    )


class DeadLetters:
    """One service's dead letters: stored by the bus's delivery policy, listed and replayed by operators."""

    def __init__(self, service: str, table: Table, session: Callable[[], contextlib.AbstractContextManager[Any]]):
        self.service, self.table, self.session = service, table, session
        self.consumers: dict[str, Callable[[Event], None]] = {}

    def store(self, consumer: str, ev: Event, error: str) -> None:
        """Keep `ev` as given up by `consumer` (again, if it was replayed and failed once more)."""
        t = self.table
        values = dict(
            envelope=ev.to_dict(), error=error[:4000], attempts=ev.attempt, failed_at=utcnow(), replayed_at=None
        )
        with self.session() as s:
            row = s.execute(select(t.c.id).where(t.c.event_id == ev.id, t.c.consumer == consumer)).first()
            if row:
                s.execute(update(t).where(t.c.id == row.id).values(**values))
            else:
                s.execute(t.insert().values(event_id=ev.id, consumer=consumer, subject=ev.subject, **values))
        log.error("dead-lettered %s for %s: %s", ev.id, consumer, error, extra={"event_id": ev.id})

    def list(self, *, include_replayed: bool = False) -> list[dict[str, Any]]:
        """The dead letters of this service's consumers, oldest first."""
        q = select(self.table).order_by(self.table.c.id)
        if not include_replayed:
            q = q.where(self.table.c.replayed_at.is_(None))
        with self.session() as s:
            return [dict(r._mapping) for r in s.execute(q)]

    def replay(self, dead_letter_id: int) -> None:
        """Hand a dead letter to its consumer again, now; raises what the handler raises."""
        t = self.table
        with self.session() as s:
            row = s.execute(select(t).where(t.c.id == dead_letter_id)).first()
        if row is None:
            raise NotReplayable(f"{self.service}: no dead letter {dead_letter_id}")
        handler = self.consumers.get(row.consumer)
        if handler is None:
            raise NotReplayable(f"{self.service}: consumer {row.consumer} is not running here")
        handler(Event.from_dict(row.subject, row.envelope))
        with self.session() as s:
            s.execute(update(t).where(t.c.id == row.id).values(replayed_at=utcnow()))
