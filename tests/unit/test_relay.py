"""The outbox relay's own logic, on a real SQLite outbox with a bus that settles publishes when the test says."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, func, select

from hms.runtime import relay as relay_module
from hms.runtime.database import make_engine, utcnow
from hms.runtime.outbox import outbox_table
from hms.runtime.relay import Relay
from tests.conftest import eventually

POLL = 0.5


class Clock:
    """The relay's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class HeldBus:
    """Keeps every publish's future for the test to settle; refuses at once the ids in `refuse`."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Future[None]]] = []
        self.times: list[str] = []
        self.refuse: set[str] = set()

    def publish(self, subject: str, data: dict[str, Any], **kw: Any) -> Future[None]:
        if kw["event_id"] in self.refuse:
            raise RuntimeError("not connected")
        future: Future[None] = Future()
        self.sent.append((kw["event_id"], future))
        self.times.append(kw["time"])
        return future

    def ids(self) -> list[str]:
        return [eid for eid, _ in self.sent]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(relay_module, "time", c)
    return c


@pytest.fixture
def outbox(tmp_path: Path) -> tuple[Any, Any]:
    md = MetaData()
    table = outbox_table(md)
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}", "svc")
    md.create_all(engine)
    return engine, table


def add(outbox: tuple[Any, Any], *ids: str) -> None:
    """Rows committed by some process: the relay only sees them when it reads the outbox."""
    engine, table = outbox
    with engine.begin() as c:
        for eid in ids:
            c.execute(
                table.insert().values(
                    event_id=eid,
                    subject="claim.submitted",
                    data={},
                    source="/hms/svc",
                    time=f"time-of-{eid}",
                    created_at=utcnow(),
                )
            )


def left(outbox: tuple[Any, Any]) -> int:
    engine, table = outbox
    with engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())


def make(outbox: tuple[Any, Any], bus: HeldBus) -> Relay:
    engine, table = outbox
    return Relay("svc", table, engine, threading.RLock(), bus, poll_interval=POLL)  # type: ignore[arg-type]


def test_a_page_at_a_time_in_sequence_and_the_next_page_at_once(outbox: Any, clock: Clock) -> None:
    bus = HeldBus()
    relay = make(outbox, bus)
    add(outbox, "a", "b", "c", "d", "e")
    assert relay.relay_once(limit=2) == 2 and bus.ids() == ["a", "b"]
    # A full page: more may wait, so the next due round reads again at once (no poll interval passed).
    assert relay.relay_once(limit=2, only_if_due=True) == 2 and bus.ids() == ["a", "b", "c", "d"]
    assert relay.relay_once(limit=2, only_if_due=True) == 1 and bus.ids()[-1] == "e"


def test_settled_rows_are_deleted_and_never_sent_again(outbox: Any, clock: Clock) -> None:
    bus = HeldBus()
    relay = make(outbox, bus)
    add(outbox, "a", "b")
    relay.relay_once()
    assert relay.relay_once() == 0  # in flight: not sent twice
    for _, future in bus.sent:
        future.set_result(None)
    assert relay.relay_once() == 0 and left(outbox) == 0 and bus.ids() == ["a", "b"]


def test_a_publish_the_bus_refused_stays_and_goes_again_after_five_polls(outbox: Any, clock: Clock) -> None:
    bus = HeldBus()
    relay = make(outbox, bus)
    add(outbox, "a")
    relay.relay_once()
    bus.sent[0][1].set_exception(RuntimeError("broker away"))
    clock.now += 4.9 * POLL
    assert relay.relay_once() == 0 and left(outbox) == 1  # kept, and not hammered at the broker
    clock.now += 0.2 * POLL
    assert relay.relay_once() == 1 and bus.ids() == ["a", "a"]
    bus.sent[1][1].set_result(None)
    relay.relay_once()
    assert left(outbox) == 0


def test_a_due_round_reads_the_outbox_only_when_it_may_hold_unread_rows(outbox: Any, clock: Clock) -> None:
    bus = HeldBus()
    relay = make(outbox, bus)
    assert relay.relay_once(only_if_due=True) == 0  # the first round reads
    add(outbox, "a")  # written by another process: no wake here
    assert relay.relay_once(only_if_due=True) == 0  # not due: nothing read
    clock.now += POLL  # a poll interval later it is
    assert relay.relay_once(only_if_due=True) == 1
    add(outbox, "b")
    relay.wake()  # a commit of this process wrote it
    assert relay.relay_once(only_if_due=True) == 1 and bus.ids() == ["a", "b"]


def test_with_too_many_in_flight_it_waits_then_reads_again_once_they_settle(
    outbox: Any, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay_module, "MAX_IN_FLIGHT", 2)
    bus = HeldBus()
    relay = make(outbox, bus)
    add(outbox, "a", "b")
    assert relay.relay_once(only_if_due=True) == 2
    add(outbox, "c")
    relay.wake()
    assert relay.relay_once(only_if_due=True) == 0  # two in flight: no room
    for _, future in bus.sent:
        future.set_result(None)
    assert relay.relay_once(only_if_due=True) == 1 and bus.ids() == ["a", "b", "c"]  # due again without a poll


def test_the_relay_thread_outlives_an_error(outbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bus = HeldBus()
    engine, table = outbox
    relay = Relay("svc", table, engine, threading.RLock(), bus, poll_interval=0.02)  # type: ignore[arg-type]
    real, calls = relay.relay_once, []

    def flaky(*args: Any, **kw: Any) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        return real(*args, **kw)

    monkeypatch.setattr(relay, "relay_once", flaky)
    add(outbox, "a")
    relay.start()
    try:
        eventually(lambda: bus.ids() == ["a"], 5)
    finally:
        relay.stop()


def test_an_event_keeps_the_time_it_was_written(outbox: Any, clock: Clock) -> None:
    bus = HeldBus()
    add(outbox, "a")
    make(outbox, bus).relay_once()
    assert bus.times == ["time-of-a"]


def test_a_publish_refused_at_once_goes_again_later_and_the_rest_go_now(outbox: Any, clock: Clock) -> None:
    bus = HeldBus()
    relay = make(outbox, bus)
    add(outbox, "a", "b", "c")
    bus.refuse = {"b"}
    assert relay.relay_once() == 2 and bus.ids() == ["a", "c"]  # b failed; the rows after it still went
    bus.refuse = set()
    clock.now += 4.9 * POLL
    assert relay.relay_once() == 0  # b waits its five polls
    clock.now += 0.2 * POLL
    assert relay.relay_once() == 1 and bus.ids() == ["a", "c", "b"]
