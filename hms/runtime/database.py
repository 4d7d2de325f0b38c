"""A service's own database: its engine, and the one clock and datetime type every service table uses."""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.types import DateTime, String, TypeDecorator

# A commit that fills SQLite's write-ahead log past this many pages copies it back into the database file and syncs
# it, inside that commit: 3-4 ms, on whichever claim's transaction comes then. A started store does it in a worker of
# its own long before (ServiceStore.checkpoint); the threshold stays as a floor for tools that run without one
# (SQLite's default is 1,000).
AUTOCHECKPOINT_PAGES = 100_000


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the services' tables use."""
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


E = TypeVar("E", bound=enum.StrEnum)


class EnumText(TypeDecorator[E]):
    """A string enum stored as its plain text value (no database enum type to migrate), read back as the enum."""

    impl = String
    cache_ok = True

    def __init__(self, enum_class: type[E], length: int) -> None:
        super().__init__(length)
        self.enum_class, self.length = enum_class, length

    def process_bind_param(self, value: E | str | None, dialect: Any) -> str | None:
        return None if value is None else self.enum_class(value).value

    def process_result_value(self, value: str | None, dialect: Any) -> E | None:
        return None if value is None else self.enum_class(value)


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
            cur.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
            cur.close()

        def begin_immediate(dbapi_conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: no deadlock when a reader later writes. The dialect's own
            # begin, not a `begin` event: one connection event listener makes SQLAlchemy dispatch events around
            # every statement, which cost 12 % of a claim's instructions (bench/ANALYSIS.md).
            dbapi_conn.execute("BEGIN IMMEDIATE")

        engine.dialect.do_begin = begin_immediate  # type: ignore[method-assign, assignment]

        return engine
    if u.get_backend_name() == "postgresql":
        engine = create_engine(u, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        return engine.execution_options(schema_translate_map={None: service})
    raise ValueError(f"database URL for {service}: unsupported backend {u.get_backend_name()!r}")


def table_of(model: Any) -> Table:
    """A mapped class's table, for Core statements built once (typed: `__table__` is only a FromClause to mypy)."""
    return cast(Table, model.__table__)


def insert_new(engine: Engine | Connection, table: Any) -> Any:
    """An INSERT into `table` (a Table, or a mapped class's `__table__`) that skips a row whose key is already there;
    it returns a row only when it inserted one. Built once per table: run it with the row as parameters."""
    return _insert_new(engine.dialect.name, table)


@functools.lru_cache(maxsize=128)
def _insert_new(dialect: str, table: Any) -> Any:
    return _insert(dialect, table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def upsert(engine: Engine | Connection, table: Any, *, update: Sequence[str], returning: Sequence[str] = ()) -> Any:
    """An INSERT into `table`, executed with the row as its parameters, that, when a row with the same primary key
    is there, sets that row's `update` columns to the given values instead (one statement: two transactions that
    both find no row cannot both insert), and returns the `returning` columns of the row either way.

    Built once per table and set of columns: a statement built on every call costs more than running it.
    """
    return _upsert(engine.dialect.name, table, tuple(update), tuple(returning))


@functools.lru_cache(maxsize=128)
def _upsert(dialect: str, table: Any, update: tuple[str, ...], returning: tuple[str, ...]) -> Any:
    ins = _insert(dialect, table)
    keys = [c.name for c in table.primary_key.columns]
    stmt = ins.on_conflict_do_update(index_elements=keys, set_={c: ins.excluded[c] for c in update})
    return stmt.returning(*(table.c[c] for c in returning)) if returning else stmt


def _insert(dialect: str, table: Any) -> Any:
    """The INSERT of the dialect, which can say what to do with a row whose key is there already."""
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)
