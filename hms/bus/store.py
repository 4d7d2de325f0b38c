"""A service's own database, with its transactional outbox, inbox and dead letters."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from .base import DEFAULT_BACKOFF, Bus, Event, Subscription
from .tracing import bound, trace_id

log = logging.getLogger("hms.bus")
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
LEADER_CHECK_S = 5.0  # how often the relay leader checks that its lock session is alive
MAX_IN_FLIGHT = 2000  # events handed to the bus and not yet settled, per store


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the stores use."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def messaging_tables(metadata: MetaData) -> tuple[Table, Table, Table]:
    """Add the outbox, inbox and dead-letter tables to a service's metadata."""
    outbox = Table(
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
    inbox = Table(
        "inbox",
        metadata,
        Column("event_id", String(64), primary_key=True),
        Column("consumer", String(200), primary_key=True),
        Column("subject", String(200), nullable=False),
        Column("handled_at", UtcDateTime(), nullable=False),
    )
    dead = Table(
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
    return outbox, inbox, dead


class _Work:
    __slots__ = ("fn", "error", "finished")

    def __init__(self, fn: Callable[[Session], None]) -> None:
        self.fn, self.error, self.finished = fn, None, False


class GroupCommit:
    """Consumers' transactions, several to a commit where the database has one writer at a time (SQLite).

    A delivery that arrives while another's transaction is open waits, and the next transaction takes every
    waiting one, one commit for all. If any of them fails, nothing of the group is stored and each runs
    again in a transaction of its own, so only the failing one fails (handlers are idempotent: they may
    run again anyway). `run` returns only once its work is committed, so an acknowledgement still means
    durable. With one writer nothing runs in parallel anyway; grouping saves the commits and the hand-offs
    of the write lock. PostgreSQL has many writers: there each delivery keeps a transaction of its own.
    """

    def __init__(self, session: Callable[[], contextlib.AbstractContextManager[Session]], *, batched: bool) -> None:
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


def make_engine(url: str, service: str) -> Engine:
    """An engine for one service: SQLite in WAL mode with serialised writers, or a PostgreSQL schema."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: no deadlock when a reader later writes. Straight to the
            # driver: this runs for every transaction, and SQLAlchemy's execution path costs more than SQLite does.
            conn.connection.driver_connection.execute("BEGIN IMMEDIATE")

        return engine
    if u.get_backend_name() == "postgresql":
        engine = create_engine(u, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        return engine.execution_options(schema_translate_map={None: service})
    raise ValueError(f"database URL for {service}: unsupported backend {u.get_backend_name()!r}")


class ServiceStore:
    """One service's database: transactions that write state and events together, and their relay."""

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
    ) -> None:
        self.name, self.metadata, self.url, self.bus = name, metadata, url, bus
        self.credentials = credentials
        self.max_deliver, self.backoff = max_deliver, tuple(backoff)
        self.source = f"/hms/{name}"
        self.outbox, self.inbox, self.dead_letters = (metadata.tables[t] for t in ("outbox", "inbox", "dead_letters"))
        self.engine = make_engine(url, name)
        # SQLite has one writer at a time. Threads of this process queue on a lock instead of in SQLite's busy
        # handler, which sleeps in steps of up to 50 ms; other processes still wait in the busy handler.
        self._serial: Any = threading.RLock() if self.engine.dialect.name == "sqlite" else contextlib.nullcontext()
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self.poll_interval = poll_interval
        self._consumers: dict[str, Callable[[Event], None]] = {}
        self._chores: list[Callable[[], None]] = []
        self._subscriptions: list[dict[str, Any]] = []
        self._active: list[Subscription] = []
        self._leader: Any = None
        self._leader_checked = 0.0
        self._wake = threading.Event()
        self._new_rows = True  # rows may wait that the relay has not read: look at the outbox on its next round
        self._last_scan = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: set[str] = set()
        self._acked: list[str] = []
        self._retry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._insert_outbox = self.outbox.insert()
        self._insert_inbox = self.insert_new(self.inbox)
        self._delete_sent = delete(self.outbox).where(self.outbox.c.event_id == bindparam("eid"))
        self._group_commit = GroupCommit(self.session, batched=self.engine.dialect.name == "sqlite")
        event.listen(self.Session, "after_commit", self._after_commit)

    # -- transactions -----------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: commits when the block ends, rolls back when it raises."""
        with self._serial, self.Session() as s, s.begin():
            yield s

    def lock(self, session: Session, key: str) -> None:
        """Serialise transactions that touch `key`, until this transaction ends.

        On PostgreSQL an advisory transaction lock; SQLite already runs one writer at a time (BEGIN IMMEDIATE).
        """
        if self.engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"{self.name}:{key}"})

    def emit(self, session: Session, subject: str, data: dict[str, Any], *, traceparent: str | None = None) -> str:
        """Put an event in the outbox inside `session`'s transaction; returns its id."""
        ev = Event.create(subject, data, source=self.source, traceparent=traceparent)
        contracts = getattr(self.bus, "contracts", None)
        if contracts is not None:
            contracts.validate(subject, data, ev.version)  # fail inside the transaction, not in the relay
        session.execute(
            self._insert_outbox,  # built once: parameters, not values baked into a new statement each time
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
        session.info["outbox"] = True
        return ev.id

    def _after_commit(self, session: Session) -> None:
        if session.info.pop("outbox", False):
            self._new_rows = True
            self._wake.set()
        for callback in session.info.pop("after_commit", []):
            callback()

    @staticmethod
    def after_commit(session: Session, callback: Callable[[], None]) -> None:
        """Run `callback` once `session`'s transaction has committed (to wake a worker for what it wrote)."""
        session.info.setdefault("after_commit", []).append(callback)

    # -- consuming --------------------------------------------------------------------------
    def consume(
        self,
        subject: str,
        handler: Callable[[Session, Event], None],
        *,
        max_deliver: int | None = None,
        backoff: Sequence[float] | None = None,
    ) -> None:
        """Declare `handler(session, event)` an idempotent consumer (one effect per event id), live from start()."""
        consumer = f"{self.name}.{handler.__name__}"

        def handle(s: Session, ev: Event) -> None:
            with bound(event_id=ev.id, claim_id=ev.data.get("claimId"), trace_id=trace_id(ev.traceparent)):
                first = s.execute(
                    self._insert_inbox,
                    {"event_id": ev.id, "consumer": consumer, "subject": ev.subject, "handled_at": utcnow()},
                )
                if first.first() is None:
                    return  # already handled: a redelivery or a duplicate publish
                handler(s, ev)

        def on_event(ev: Event) -> None:
            self._group_commit.run(lambda s: handle(s, ev))

        self._consumers[consumer] = on_event
        self._subscriptions.append(
            dict(
                subject=subject,
                handler=on_event,
                queue=consumer,
                max_deliver=max_deliver or self.max_deliver,
                backoff=self.backoff if backoff is None else backoff,
                dead_letter=lambda ev, error: self._store_dead_letter(consumer, ev, error),
            )
        )

    @property
    def subscribed(self) -> list[str]:
        """The subjects this store's consumers listen to, in declaration order."""
        return list(dict.fromkeys(sub["subject"] for sub in self._subscriptions))

    def insert_new(self, table: Table) -> Any:
        """An INSERT that skips a row whose key is already there; it returns a row only when it inserted one."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)

    def _store_dead_letter(self, consumer: str, ev: Event, error: str) -> None:
        envelope = ev.to_dict()
        with self.session() as s:
            row = s.execute(
                select(self.dead_letters.c.id).where(
                    self.dead_letters.c.event_id == ev.id, self.dead_letters.c.consumer == consumer
                )
            ).first()
            values = dict(
                envelope=envelope, error=error[:4000], attempts=ev.attempt, failed_at=utcnow(), replayed_at=None
            )
            if row:
                s.execute(update(self.dead_letters).where(self.dead_letters.c.id == row.id).values(**values))
            else:
                s.execute(
                    self.dead_letters.insert().values(event_id=ev.id, consumer=consumer, subject=ev.subject, **values)
                )
        log.error("dead-lettered %s for %s: %s", ev.id, consumer, error, extra={"event_id": ev.id})

    def list_dead_letters(self, *, include_replayed: bool = False) -> list[dict[str, Any]]:
        """The dead letters of this service's consumers, oldest first."""
        q = select(self.dead_letters).order_by(self.dead_letters.c.id)
        if not include_replayed:
            q = q.where(self.dead_letters.c.replayed_at.is_(None))
        with self.session() as s:
            return [dict(r._mapping) for r in s.execute(q)]

    def replay(self, dead_letter_id: int) -> None:
        """Hand a dead letter to its consumer again, now; raises what the handler raises."""
        with self.session() as s:
            row = s.execute(select(self.dead_letters).where(self.dead_letters.c.id == dead_letter_id)).first()
        if row is None:
            raise LookupError(f"{self.name}: no dead letter {dead_letter_id}")
        handler = self._consumers.get(row.consumer)
        if handler is None:
            raise LookupError(f"{self.name}: consumer {row.consumer} is not running here")
        handler(Event.from_dict(row.subject, row.envelope))
        with self.session() as s:
            s.execute(update(self.dead_letters).where(self.dead_letters.c.id == row.id).values(replayed_at=utcnow()))

    # -- relay ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the consumers, and relaying committed outbox rows to the bus (also those left by a crash)."""
        if not self._active:
            self._active = [self.bus.subscribe(**sub) for sub in self._subscriptions]
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._relay, name=f"hms-outbox-{self.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the consumers and the relay; unpublished rows stay in the outbox for the next start."""
        for sub in self._active:
            sub.unsubscribe()
        self._active = []
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._leader is not None:
            self._leader.invalidate()  # ends the database session, and with it the relay lock, for a standby
            self._leader = None

    def outbox_backlog(self) -> int:
        """How many events wait in the outbox."""
        with self._serial, self.engine.connect() as c:
            return int(c.execute(select(text("count(*)")).select_from(self.outbox)).scalar_one())

    def housekeeping(self, task: Callable[[], None]) -> None:
        """Run `task` about once an hour in the relay's thread (pruning old records)."""
        self._chores.append(task)

    def prune_inbox(self, older_than: timedelta) -> int:
        """Forget handled event ids older than `older_than`; returns how many were dropped."""
        with self.session() as s:
            return s.execute(delete(self.inbox).where(self.inbox.c.handled_at < utcnow() - older_than)).rowcount

    def _is_leader(self) -> bool:
        """Whether this process relays the outbox: on PostgreSQL one relay per service holds an advisory lock,
        the others stand by and take over when its connection goes."""
        if self.engine.dialect.name != "postgresql":
            return True
        if self._leader is not None:
            if time.monotonic() < self._leader_checked + LEADER_CHECK_S:
                # Not a round trip per event. If the session died meanwhile, two relays may overlap for a few
                # seconds; what they both send is dropped by event id (Nats-Msg-Id, then the inboxes).
                return True
            try:
                self._leader.execute(text("SELECT 1"))
                self._leader.commit()
                self._leader_checked = time.monotonic()
                return True
            except Exception:
                self._leader.invalidate()
                self._leader = None
        conn = self.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"), {"k": f"relay:{self.name}"})
        if got.scalar():
            conn.commit()  # the lock is the session's, it outlives this transaction
            self._leader, self._leader_checked = conn, time.monotonic()
            log.info("outbox relay of %s: leader", self.name)
            return True
        conn.close()
        return False

    def _relay(self) -> None:
        next_chores = time.monotonic() + 60  # first chores a minute after start, then hourly
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            try:
                if not self._is_leader():
                    continue
                self.relay_once(only_if_due=True)
                if time.monotonic() >= next_chores:
                    next_chores = time.monotonic() + 3600
                    for chore in self._chores:
                        chore()
            except Exception:
                log.exception("outbox relay of %s failed; retrying", self.name)
                self._stop.wait(self.poll_interval)

    def relay_once(self, limit: int = 500, *, only_if_due: bool = False) -> int:
        """Publish the outbox rows not yet in flight and delete those the bus holds; returns how many were sent.

        With `only_if_due` (the relay thread, woken for every settled delivery) the outbox is read only when it
        may hold rows not read yet: a commit of this process wrote some, the last read filled its page or found
        no in-flight room, or a poll interval has passed since the last read (retries now due, rows other
        processes of the service wrote).
        """
        with self._lock:
            acked, self._acked = self._acked, []
            now = time.monotonic()
            scan = not only_if_due or self._new_rows or now - self._last_scan >= self.poll_interval
            if scan:
                self._new_rows, self._last_scan = False, now
                for event_id in [e for e, at in self._retry.items() if at <= now]:
                    del self._retry[event_id]
                skip = self._inflight | set(self._retry)
        if acked:
            with self._serial, self.engine.begin() as c:  # one statement, executed for many ids
                c.execute(self._delete_sent, [{"eid": e} for e in acked])
        if not scan:
            return 0
        if len(skip) >= MAX_IN_FLIGHT:
            self._new_rows = True  # look again once deliveries have settled
            return 0
        # No high-water mark: rows commit out of sequence order on PostgreSQL, and other processes
        # (a CLI replay) write rows too. Every committed row not in flight is a candidate; those in flight are
        # skipped here rather than in SQL (a NOT IN of thousands of ids costs more to build than to read past).
        q = select(self.outbox).order_by(self.outbox.c.seq).limit(limit + len(skip))
        with self._serial, self.engine.connect() as c:
            rows = [r for r in c.execute(q) if r.event_id not in skip]
            c.rollback()
        if len(rows) >= limit:
            rows = rows[:limit]
            self._new_rows = True  # a full page: more may wait behind it
        sent = 0
        for row in rows:
            with self._lock:
                if row.event_id in self._inflight:
                    continue
                self._inflight.add(row.event_id)
            try:
                ack = self.bus.publish(
                    row.subject,
                    row.data,
                    event_id=row.event_id,
                    source=row.source,
                    time=row.time,
                    traceparent=row.traceparent,
                    headers=self.credentials(),
                )
            except Exception:
                log.exception("publishing %s %s failed; will retry", row.subject, row.event_id)
                self._settled(row.event_id, failed=True)
                continue
            ack.add_done_callback(lambda f, eid=row.event_id: self._settled(eid, failed=f.exception() is not None))
            sent += 1
        return sent

    def _settled(self, event_id: str, *, failed: bool) -> None:
        with self._lock:
            self._inflight.discard(event_id)
            if failed:
                self._retry[event_id] = time.monotonic() + 5 * self.poll_interval
            else:
                self._acked.append(event_id)
        self._wake.set()

    # -- schema -----------------------------------------------------------------------------
    def upgrade(self, revision: str = "head") -> None:
        """Run this service's Alembic migrations up to `revision`."""
        from alembic import command

        with self.engine.begin() as conn:
            command.upgrade(self._alembic(conn), revision)

    def is_current(self) -> bool:
        """Whether the database has every migration of this service (what `hms db upgrade` does)."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        with self.engine.connect() as conn:
            schema = None if conn.dialect.name == "sqlite" else self.name
            applied = MigrationContext.configure(conn, opts={"version_table_schema": schema}).get_current_heads()
            heads = ScriptDirectory.from_config(self._alembic(conn)).get_heads()
        return set(applied) == set(heads)

    def revision(self, message: str) -> None:
        """Write a new migration from the difference between the models and the database."""
        from alembic import command

        with self.engine.begin() as conn:
            command.revision(self._alembic(conn), message=message, autogenerate=True)

    def _alembic(self, conn: Any) -> Any:
        from alembic.config import Config

        if not (MIGRATIONS / self.name).is_dir():
            raise FileNotFoundError(
                f"{MIGRATIONS / self.name}: migrations not found (install hms from its source tree)"
            )
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS / self.name))
        cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
        cfg.attributes.update(connection=conn, metadata=self.metadata, service=self.name)
        return cfg

    def ping(self) -> None:
        """Raise when the database cannot be reached."""
        with self._serial, self.engine.connect() as c:
            c.execute(text("SELECT 1"))

    def dispose(self) -> None:
        """Stop the relay and close every connection."""
        self.stop()
        self.engine.dispose()
