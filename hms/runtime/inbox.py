"""The inbox: each consumer handles each event id once, and consumers' transactions commit in groups on SQLite."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import Column, MetaData, String, Table, delete
from sqlalchemy.orm import Session

from hms.bus import Event
from hms.bus.tracing import bound, trace_id

from .database import UtcDateTime, insert_new, utcnow


def inbox_table(metadata: MetaData) -> Table:
    """The inbox table of a service's database (migrations/messaging)."""
    return Table(
        "inbox",
        metadata,
        Column("event_id", String(64), primary_key=True),
        Column("consumer", String(200), primary_key=True),
        Column("subject", String(200), nullable=False),
        Column("handled_at", UtcDateTime(), nullable=False),
    )


class Inbox:
    """Turns a handler into an idempotent consumer: one effect per (event id, consumer), in one transaction."""

    def __init__(self, table: Table, session: Callable[[], contextlib.AbstractContextManager[Any]], engine: Any):
        self.table, self.session = table, session
        self._insert = insert_new(engine, table)
        self._commits = GroupCommit(session, batched=engine.dialect.name == "sqlite")

    def consumer(self, name: str, handler: Callable[[Any, Event], None]) -> Callable[[Event], None]:
        """What the bus calls for each delivery to consumer `name`: the handler once per event id, committed."""

        def handle(s: Session, ev: Event) -> None:
            with bound(event_id=ev.id, claim_id=ev.data.get("claimId"), trace_id=trace_id(ev.traceparent)):
                first = s.execute(
                    self._insert, {"event_id": ev.id, "consumer": name, "subject": ev.subject, "handled_at": utcnow()}
                )
                if first.first() is None:
                    return  # already handled: a redelivery or a duplicate publish
                handler(s, ev)

        def on_event(ev: Event) -> None:
            self._commits.run(lambda s: handle(s, ev))

        return on_event

    def prune(self, older_than: timedelta) -> int:
        """Forget handled event ids older than `older_than`; returns how many were dropped."""
        with self.session() as s:
            return int(s.execute(delete(self.table).where(self.table.c.handled_at < utcnow() - older_than)).rowcount)


class _Work:
    __slots__ = ("fn", "error", "finished")

    def __init__(self, fn: Callable[[Session], None]) -> None:
        self.fn: Callable[[Session], None] = fn
        self.error: BaseException | None = None
        self.finished = False


class GroupCommit:
    """Consumers' transactions, several to a commit where the database has one writer at a time (SQLite).

    A delivery that arrives while another's transaction is open waits, and the next transaction takes every
    waiting one, one commit for all. If any of them fails, nothing of the group is stored and each runs
    again in a transaction of its own, so only the failing one fails (handlers are idempotent: they may
    run again anyway). `run` returns only once its work is committed, so an acknowledgement still means
    durable. With one writer nothing runs in parallel anyway; grouping saves the commits and the hand-offs
    of the write lock. PostgreSQL has many writers: there each delivery keeps a transaction of its own.
    """

    def __init__(self, session: Callable[[], contextlib.AbstractContextManager[Any]], *, batched: bool) -> None:
        self.session, self.batched = session, batched
        self._cv = threading.Condition()
        self._waiting: list[_Work] = []
        self._busy = False

    def run(self, fn: Callable[[Session], None]) -> None:
        """Run `fn(session)` in a transaction; returns when it is committed, raises what it raised."""
        if not self.batched:
            with self.session() as s:
                fn(s)
            return
        work = _Work(fn)
        group: list[_Work] = []
        with self._cv:
            self._waiting.append(work)
            while self._busy and not work.finished:
                self._cv.wait()
            if not work.finished:  # this thread commits the next group, its own work among it
                self._busy = True
                group, self._waiting = self._waiting, []
        if not work.finished:
            try:
                self._commit(group)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
        if work.error is not None:
            raise work.error

    def _commit(self, group: list[_Work]) -> None:
        try:
            with self.session() as s:
                for work in group:
                    work.fn(s)
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
            else:  # nothing of the group is stored: each again alone, so only the failing one fails
                for work in group:
                    try:
                        with self.session() as s:
                            work.fn(s)
                    except Exception as alone:
                        work.error = alone
        except BaseException as exc:  # interrupted: no waiting delivery may take that for success
            for work in group:
                work.error = work.error or RuntimeError(f"transaction interrupted: {exc!r}")
            raise
        finally:
            for work in group:
                work.finished = True
