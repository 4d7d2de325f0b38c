"""The relay: sends committed outbox rows to the bus and deletes those the bus holds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from sqlalchemy import Engine, Table, bindparam, delete, select

from hms.bus import Bus

from .leader import Leadership

log = logging.getLogger("hms.runtime")
MAX_IN_FLIGHT = 2000  # events handed to the bus and not yet settled, per service


class Relay:
    """One service's outbox relay: a thread woken by commits that wrote events and by settled publishes."""

    def __init__(
        self,
        service: str,
        table: Table,
        engine: Engine,
        serial: Any,
        bus: Bus,
        *,
        poll_interval: float,
        credentials: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self.service, self.table, self.engine, self.serial, self.bus = service, table, engine, serial, bus
        self.poll_interval, self.credentials = poll_interval, credentials
        self.leadership = Leadership(engine, service)
        self.chores: list[Callable[[], None]] = []
        self._wake = threading.Event()
        self._new_rows = True  # rows may wait that the relay has not read: look at the outbox on its next round
        self._last_scan = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: set[str] = set()
        self._acked: list[str] = []
        self._retry: dict[str, float] = {}
        self._lock = threading.Lock()
        self._delete_sent = delete(table).where(table.c.event_id == bindparam("eid"))
        self._unsent = select(table).order_by(table.c.seq).limit(bindparam("n"))

    def wake(self) -> None:
        """New rows were committed: look at the outbox now."""
        self._new_rows = True
        self._wake.set()

    def start(self) -> None:
        """Relay committed rows (also those a crash left) from now on."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"hms-outbox-{self.service}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop relaying; unpublished rows stay in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.leadership.release()

    def _run(self) -> None:
        next_chores = time.monotonic() + 60  # first chores a minute after start, then hourly
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            try:
                if not self.leadership.held():
                    continue
                self.relay_once(only_if_due=True)
                if time.monotonic() >= next_chores:
                    next_chores = time.monotonic() + 3600
                    for chore in self.chores:
                        chore()
            except Exception:
                log.exception("outbox relay of %s failed; retrying", self.service)
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
            with self.serial, self.engine.begin() as c:  # one statement, executed for many ids
                c.execute(self._delete_sent, [{"eid": e} for e in acked])
        if not scan:
            return 0
        if len(skip) >= MAX_IN_FLIGHT:
            self._new_rows = True  # look again once deliveries have settled
            return 0
        # No high-water mark: rows commit out of sequence order on PostgreSQL, and other processes
        # (a CLI replay) write rows too. Every committed row not in flight is a candidate; those in flight are
        # skipped here rather than in SQL (a NOT IN of thousands of ids costs more to build than to read past).
        with self.serial, self.engine.connect() as c:
            rows = [r for r in c.execute(self._unsent, {"n": limit + len(skip)}) if r.event_id not in skip]
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
                    checked=True,  # Outbox.emit checked it in the transaction that wrote it
                )
            except Exception:
                log.exception("publishing %s %s failed; will retry", row.subject, row.event_id)
                self._settled(row.event_id, failed=True)
                continue
            ack.add_done_callback(partial(self._on_ack, row.event_id))
            sent += 1
        return sent

    def _on_ack(self, event_id: str, ack: Future[None]) -> None:
        self._settled(event_id, failed=ack.exception() is not None)

    def _settled(self, event_id: str, *, failed: bool) -> None:
        with self._lock:
            self._inflight.discard(event_id)
            if failed:
                self._retry[event_id] = time.monotonic() + 5 * self.poll_interval
            else:
                self._acked.append(event_id)
        self._wake.set()
