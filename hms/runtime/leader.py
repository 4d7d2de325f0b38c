"""Relay leadership: on PostgreSQL one process per service relays its outbox, the others stand by."""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import Engine, text

log = logging.getLogger("hms.runtime")
LEADER_CHECK_S = 5.0  # how often the leader checks that its lock session is alive


class Leadership:
    """An advisory lock held on a connection of its own; whoever holds it relays. SQLite: always the leader
    (one process owns the file's relay; other processes' rows are read by it all the same)."""

    def __init__(self, engine: Engine, service: str) -> None:
        self.engine, self.service = engine, service
        self._conn: Any = None
        self._checked = 0.0

    def held(self) -> bool:
        """Whether this process leads: keeps the lock it has, or takes it when free."""
        if self.engine.dialect.name != "postgresql":
            return True
        if self._conn is not None:
            if time.monotonic() < self._checked + LEADER_CHECK_S:
                # Not a round trip per event. If the session died meanwhile, two relays may overlap for a few
                # seconds; what they both send is dropped by event id (Nats-Msg-Id, then the inboxes).
                return True
            try:
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()
                self._checked = time.monotonic()
                return True
            except Exception:
                self._conn.invalidate()
                self._conn = None
        conn = self.engine.connect()
        got = conn.execute(text("SELECT pg_try_advisory_lock(hashtextextended(:k, 0))"), {"k": f"relay:{self.service}"})
        if got.scalar():
            conn.commit()  # the lock is the session's, it outlives this transaction
            self._conn, self._checked = conn, time.monotonic()
            log.info("outbox relay of %s: leader", self.service)
            return True
        conn.close()
        return False

    def release(self) -> None:
        """End the lock's session, and with it the lock, for a standby."""
        if self._conn is not None:
            self._conn.invalidate()
            self._conn = None
