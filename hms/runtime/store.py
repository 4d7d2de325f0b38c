"""A hosted service's database and messaging: units of work, outbox and relay, inbox, dead letters, schema."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import MetaData, Table, select, text
from sqlalchemy.orm import sessionmaker

from hms.bus import DEFAULT_BACKOFF, Bus, Event, Subscription

from . import migrations
from .database import make_engine
from .deadletters import DeadLetters, dead_letters_table
from .inbox import Inbox, inbox_table
from .outbox import Outbox, outbox_table
from .relay import Relay
from .unit import Unit
from .worker import BackgroundWorker


def messaging_tables(metadata: MetaData) -> tuple[Table, Table, Table]:
    """Add the outbox, inbox and dead-letter tables to a service's metadata (once)."""
    if "outbox" not in metadata.tables:
        outbox_table(metadata)
        inbox_table(metadata)
        dead_letters_table(metadata)
    return metadata.tables["outbox"], metadata.tables["inbox"], metadata.tables["dead_letters"]


class ServiceStore:
    """One service's database: units of work that write state and events together, and what moves the events."""

    def __init__(
        self,
        name: str,
        metadata: MetaData,
        url: str,
        bus: Bus,
        *,
        poll_interval: float = 1.0,
        max_deliver: int = 5,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        credentials: Callable[[], dict[str, str]] = dict,
        wake: Callable[[str], Callable[[], None]] = lambda worker: lambda: None,
    ) -> None:
        self.name, self.metadata, self.url, self.bus = name, metadata, url, bus
        self.max_deliver, self.backoff = max_deliver, tuple(backoff)
        self.outbox, self.inbox, self.dead_letters = messaging_tables(metadata)
        self.engine = make_engine(url, name)
        # SQLite has one writer at a time. Threads of this process queue on a lock instead of in SQLite's busy
        # handler, which sleeps in steps of up to 50 ms; other processes still wait in the busy handler.
        sqlite = self.engine.dialect.name == "sqlite"
        self._serial: Any = threading.RLock() if sqlite else contextlib.nullcontext()
        self.events = Outbox(name, self.outbox, getattr(bus, "contracts", None))
        self._idle = threading.local()
        self.Session = sessionmaker(
            class_=Unit,
            engine=self.engine,
            expire_on_commit=False,
            join_transaction_mode="rollback_only",
            outbox=self.events,
            wake=wake,
        )
        self.relay = Relay(
            name, self.outbox, self.engine, self._serial, bus, poll_interval=poll_interval, credentials=credentials
        )
        # SQLite: commits leave the write-ahead log to this worker (database.AUTOCHECKPOINT_PAGES).
        self.checkpoints = BackgroundWorker(f"{name}.checkpoint", self.checkpoint, 1.0) if sqlite else None
        self.consumed = Inbox(self.inbox, self.session, self.engine)
        self.dead = DeadLetters(name, self.dead_letters, self.session)
        self._subscriptions: list[dict[str, Any]] = []
        self._active: list[Subscription] = []

    @contextlib.contextmanager
    def session(self) -> Iterator[Unit]:
        """A unit of work: commits when the block ends, rolls back when it raises.

        Each thread keeps its last closed session and begins the next unit on it (a closed session is as new);
        a unit begun inside another one on the same thread gets a session of its own.
        """
        s = getattr(self._idle, "unit", None)
        if s is None or s.in_transaction():
            s = self.Session()
        self._idle.unit = None
        try:
            with self._serial:
                with s:
                    yield s
                    if s.in_transaction():  # the ORM was used: flush it (the unit's connection commits below)
                        s.commit()
                    s.end(commit=True)
            if s.info.get("outbox"):
                self.relay.wake()
            for callback in s.info.get("after_commit", ()):
                callback()
        finally:
            s.end(commit=False)  # a unit that raised: its transaction rolls back
            s.info.clear()  # what a rolled-back unit meant to run after its commit
            self._idle.unit = s

    # -- consuming --------------------------------------------------------------------------
    def consume(
        self,
        subject: str,
        handler: Callable[[Unit, Event], None],
        *,
        name: str,
        max_deliver: int | None = None,
        backoff: Sequence[float] | None = None,
    ) -> None:
        """Declare `handler(unit, event)` consumer `name` of `subject`: one effect per event id, live from start().

        The consumer's full name (`<service>.<name>`) keys its inbox rows, its dead letters and its durable
        subscription on NATS: it must never change once deployed.
        """
        consumer = f"{self.name}.{name}"
        on_event = self.consumed.consumer(consumer, handler)
        self.dead.consumers[consumer] = on_event
        self._subscriptions.append(
            dict(
                subject=subject,
                handler=on_event,
                queue=consumer,
                max_deliver=max_deliver or self.max_deliver,
                backoff=self.backoff if backoff is None else backoff,
                dead_letter=lambda ev, error: self.dead.store(consumer, ev, error),
            )
        )

    @property
    def subscribed(self) -> list[str]:
        """The subjects this store's consumers listen to, in declaration order."""
        return list(dict.fromkeys(sub["subject"] for sub in self._subscriptions))

    def list_dead_letters(self, *, include_replayed: bool = False) -> list[dict[str, Any]]:
        """The dead letters of this service's consumers, oldest first."""
        return self.dead.list(include_replayed=include_replayed)

    def replay(self, dead_letter_id: int) -> None:
        """Hand a dead letter to its consumer again, now; raises what the handler raises."""
        self.dead.replay(dead_letter_id)

    def prune_inbox(self, older_than: timedelta) -> int:
        """Forget handled event ids older than `older_than`; returns how many were dropped."""
        return self.consumed.prune(older_than)

    # -- running ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the consumers, relaying committed outbox rows to the bus (also those left by a crash), and (SQLite)
        checkpointing the write-ahead log in the background."""
        if not self._active:
            self._active = [self.bus.subscribe(**sub) for sub in self._subscriptions]
        self.relay.start()
        if self.checkpoints:
            self.checkpoints.start()

    def stop(self) -> None:
        """Stop the consumers and the relay; unpublished rows stay in the outbox for the next start."""
        for sub in self._active:
            sub.unsubscribe()
        self._active = []
        self.relay.stop()
        if self.checkpoints:
            self.checkpoints.stop()

    def checkpoint(self, stop: threading.Event | None = None) -> int:
        """Copy SQLite's write-ahead log back into the database file, waiting for no reader and no writer (PASSIVE),
        outside any unit of work; the checkpoint worker does it every second. Returns 0: it never has more to do."""
        connection = self.engine.raw_connection()  # no transaction: a checkpoint cannot run inside one
        try:
            connection.cursor().execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            connection.close()
        return 0

    def relay_once(self, limit: int = 500) -> int:
        """Publish the outbox rows not in flight now (tests and tools; the relay thread does this on its own)."""
        return self.relay.relay_once(limit)

    def housekeeping(self, task: Callable[[], None]) -> None:
        """Run `task` about once an hour in the relay's thread (pruning old records)."""
        self.relay.chores.append(task)

    def outbox_backlog(self) -> int:
        """How many events wait in the outbox."""
        with self._serial, self.engine.connect() as c:
            return int(c.execute(select(text("count(*)")).select_from(self.outbox)).scalar_one())

    def ping(self) -> None:
        """Raise when the database cannot be reached."""
        with self._serial, self.engine.connect() as c:
            c.execute(text("SELECT 1"))

    # -- schema -----------------------------------------------------------------------------
    def upgrade(self, revision: str = "heads") -> None:
        """Run this service's migrations up to `revision`."""
        migrations.upgrade(self.engine, self.name, self.metadata, revision)

    def is_current(self) -> bool:
        """Whether the database has every migration of this service."""
        return migrations.is_current(self.engine, self.name, self.metadata)

    def revision(self, message: str) -> None:
        """Write a new migration from the difference between the models and the database."""
        migrations.revision(self.engine, self.name, self.metadata, message)

    def dispose(self) -> None:
        """Stop the relay and close every connection."""
        self.stop()
        self.engine.dispose()
