"""The unit of work: one transaction of one service, with the events it emits and what runs after its commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, text
from sqlalchemy.orm import Session

from .database import insert_new, upsert
from .outbox import Outbox


class Unit(Session):
    """A SQLAlchemy session that is one service's transaction; handlers get one and return.

    Besides the session's own API: `emit` puts an event in the outbox in this transaction, `lock` serialises
    transactions on a key, `after_commit` runs a callback once the transaction has committed, and `wake`
    wakes one of the service's workers then (for what this transaction wrote).
    """

    def __init__(self, *, engine: Engine, outbox: Outbox, wake: Callable[[str], Callable[[], None]], **kw: Any) -> None:
        """A unit on `engine`; the store opens it (`ServiceStore.session`) and ends it."""
        self._engine = engine
        self._connection: Connection | None = None
        super().__init__(**kw)
        self.outbox, self._wake = outbox, wake

    # The unit's transaction is a connection's, begun by the first statement and ended by the store (`end`). Core
    # statements run on it directly; the ORM joins it (as its bind) only when a handler uses the ORM: a session
    # transaction of its own would cost about half as much again as the connection's for each unit.
    @property
    def bind(self) -> Connection:
        if self._connection is None:
            self._connection = self._engine.connect()
            self._connection.begin()
        return self._connection

    @bind.setter
    def bind(self, value: Any) -> None:  # Session.__init__ sets it; the unit's is always its own connection
        pass

    def end(self, *, commit: bool) -> None:
        """Commit (or roll back) the unit's transaction, if a statement began one, and give its connection back."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with connection:
                if commit:
                    connection.commit()

    def execute(self, statement: Any, params: Any = None, **kw: Any) -> Any:
        """As `Session.execute`; a Core statement (no ORM entity, no option) goes straight to the transaction's
        connection: the session's path adds nothing to it (no autoflush, no loading) but costs a third more."""
        if kw or getattr(statement, "_propagate_attrs", True):  # SQLAlchemy marks ORM statements so
            return super().execute(statement, params, **kw)
        return self.bind.execute(statement, params)

    def emit(self, subject: str, data: dict[str, Any], *, traceparent: str | None = None) -> str:
        """Put an event in the outbox inside this transaction; returns its id."""
        return self.outbox.emit(self, subject, data, traceparent=traceparent)

    def lock(self, key: str) -> None:
        """Serialise transactions that touch `key`, until this one ends.

        On PostgreSQL an advisory transaction lock; SQLite already runs one writer at a time (BEGIN IMMEDIATE).
        """
        if self.get_bind().dialect.name == "postgresql":
            k = f"{self.outbox.service}:{key}"
            self.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": k})

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this transaction has committed."""
        self.info.setdefault("after_commit", []).append(callback)

    def wake(self, worker: str) -> None:
        """Wake the service's background worker `worker` once this transaction has committed (a name the service
        did not declare fails here, inside the transaction, not after it)."""
        self.after_commit(self._wake(worker))

    def insert_new(self, table: Any) -> Any:
        """An INSERT that skips a row whose key is already there; it returns a row only when it inserted one."""
        return insert_new(self.get_bind(), table)

    def upsert(self, table: Any, *, update: Sequence[str], returning: Sequence[str] = ()) -> Any:
        """An INSERT, run with the row as parameters, that sets the `update` columns of the row already there under
        its key instead, and returns the `returning` columns (database.upsert)."""
        return upsert(self.get_bind(), table, update=update, returning=returning)
