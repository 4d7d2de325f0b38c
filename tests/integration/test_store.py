"""Outbox, inbox and dead letters on a real SQLite database."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text
from sqlalchemy.orm import Session

from hms.bus import Contracts, Event
from hms.bus.memory import MemoryBus
from hms.runtime import ServiceStore, messaging_tables
from hms.runtime.database import make_engine
from tests.conftest import eventually

SUBMITTED = {"claimId": "c1", "citizen": "diego", "submittedAt": "2026-11-27T10:00:00Z"}


Maker = Callable[..., tuple[ServiceStore, Table]]


@pytest.fixture
def make_store(tmp_path: Path, database_url: str, bus: MemoryBus) -> Iterator[Maker]:
    """Make stores with an `effects` table: each its own SQLite file, or (PostgreSQL) its own schema of one
    database; all stopped when the test ends."""
    made: list[ServiceStore] = []

    def make(name: str = "svc") -> tuple[ServiceStore, Table]:
        md = MetaData()
        effects = Table("effects", md, Column("id", Integer, primary_key=True), Column("event_id", String(64)))
        messaging_tables(md)
        store = ServiceStore(name, md, database_url or f"sqlite:///{tmp_path / name}.db", bus, poll_interval=0.05)
        with store.engine.begin() as c:
            if c.dialect.name == "postgresql":
                c.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {name}")
            md.create_all(c)
        made.append(store)
        return store, effects

    yield make
    for store in made:
        store.dispose()


@pytest.fixture
def bus() -> Iterator[MemoryBus]:
    b = MemoryBus(Contracts())
    yield b
    b.close()


def count(store: ServiceStore, table: Table) -> int:
    with store.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())


def test_the_event_is_written_with_the_state_change_or_not_at_all(make_store: Maker, bus: MemoryBus) -> None:
    store, effects = make_store()
    with pytest.raises(RuntimeError), store.session() as s:
        s.execute(effects.insert().values(event_id="x"))
        s.emit("claim.submitted", SUBMITTED)
        raise RuntimeError("crash before commit")
    assert count(store, store.outbox) == 0 and count(store, effects) == 0
    with store.session() as s:
        s.execute(effects.insert().values(event_id="y"))
        s.emit("claim.submitted", SUBMITTED)
    assert count(store, store.outbox) == 1


def test_emit_refuses_a_contract_violation_inside_the_transaction(make_store: Maker, bus: MemoryBus) -> None:
    store, effects = make_store()
    with pytest.raises(ValueError, match="citizen"), store.session() as s:
        s.execute(effects.insert().values(event_id="x"))
        s.emit("claim.submitted", {"claimId": "c1", "submittedAt": "2026-11-27T10:00:00Z"})
    assert count(store, effects) == 0


def test_the_relay_publishes_after_commit_and_empties_the_outbox(make_store: Maker, bus: MemoryBus) -> None:
    store, _ = make_store()
    got: list[Event] = []
    bus.subscribe("claim.submitted", got.append)
    with store.session() as s:
        event_id = s.emit("claim.submitted", SUBMITTED)
    assert got == []  # nothing leaves before the relay runs
    store.start()
    eventually(lambda: got and count(store, store.outbox) == 0)
    assert [e.id for e in got] == [event_id] and got[0].source == "/hms/svc"
    store.stop()


def test_an_event_is_checked_against_its_contract_once_on_its_way_through_one_process(
    make_store: Maker, bus: MemoryBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outbox checks it in the emitting transaction; the relay's publish and the in-process delivery do not
    check it again (they used to: three checks per hop)."""
    checks: list[str] = []
    validate = bus.contracts.validate
    monkeypatch.setattr(bus.contracts, "validate", lambda subject, *a: checks.append(subject) or validate(subject, *a))
    store, _ = make_store()
    assert store.events.contracts is bus.contracts  # the outbox checks with the bus's contracts
    got: list[Event] = []
    bus.subscribe("claim.submitted", got.append)
    with store.session() as s:
        s.emit("claim.submitted", SUBMITTED)
    store.start()
    eventually(lambda: got and count(store, store.outbox) == 0)
    store.stop()
    assert checks == ["claim.submitted"]
    bus.publish("claim.submitted", SUBMITTED).result(5)  # a publish not from an outbox is checked where it is made
    assert checks == ["claim.submitted"] * 2 and len(got) == 2


def test_rows_left_by_a_crash_are_sent_on_the_next_start(make_store: Maker, bus: MemoryBus) -> None:
    store, _ = make_store()
    with store.session() as s:
        ids = {s.emit("claim.submitted", {**SUBMITTED, "claimId": f"c{i}"}) for i in range(5)}
    store.engine.dispose()  # the process "dies" here, the rows stay committed
    again, _ = make_store()
    got: list[Event] = []
    bus.subscribe("claim.submitted", got.append)
    again.start()
    eventually(lambda: len(got) == 5)
    assert {e.id for e in got} == ids
    again.stop()


def test_a_consumer_has_one_effect_per_event_id_even_when_delivered_concurrently(
    make_store: Maker, bus: MemoryBus
) -> None:
    consumer, effects = make_store("metrics")

    def record(s: Session, event: Event) -> None:
        s.execute(effects.insert().values(event_id=event.id))

    consumer.consume("claim.submitted", record, name="record")
    consumer.start()
    acks = []
    barrier = threading.Barrier(10)

    def publish_same() -> None:
        barrier.wait()
        for _ in range(10):
            acks.append(bus.publish("claim.submitted", SUBMITTED, event_id="same-event"))

    threads = [threading.Thread(target=publish_same) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ack in acks:
        ack.result(10)
    assert len(acks) == 100
    assert count(consumer, effects) == 1
    assert count(consumer, consumer.inbox) == 1


def test_a_poison_event_is_dead_lettered_then_replayed(make_store: Maker, bus: MemoryBus) -> None:
    store, effects = make_store("metrics")
    broken = {"on": True}

    def fragile(s: Session, event: Event) -> None:
        if broken["on"] and event.id == "poison":
            raise RuntimeError("downstream bug")
        s.execute(effects.insert().values(event_id=event.id))

    store.consume("claim.submitted", fragile, name="fragile", max_deliver=3, backoff=[0.01])
    store.start()
    poison = bus.publish("claim.submitted", SUBMITTED, event_id="poison")
    bus.publish("claim.submitted", {**SUBMITTED, "claimId": "c2"}, event_id="fine").result(5)
    assert count(store, effects) == 1  # the event behind the poison was not blocked
    poison.result(5)
    [dead] = store.list_dead_letters()
    assert (dead["event_id"], dead["attempts"], dead["consumer"]) == ("poison", 3, "metrics.fragile")
    assert "downstream bug" in dead["error"]
    assert count(store, store.inbox) == 1  # the failed attempts left no trace behind
    broken["on"] = False
    store.replay(dead["id"])
    assert count(store, effects) == 2 and store.list_dead_letters() == []
    store.replay(dead["id"])  # a second replay is a duplicate: no second effect
    assert count(store, effects) == 2


def test_inbox_retention_forgets_only_old_ids(make_store: Maker, bus: MemoryBus) -> None:
    from datetime import timedelta

    from hms.runtime import utcnow

    store, _ = make_store()
    with store.session() as s:
        s.execute(
            store.inbox.insert().values(
                event_id="old", consumer="c", subject="x", handled_at=utcnow() - timedelta(days=40)
            )
        )
        s.execute(store.inbox.insert().values(event_id="new", consumer="c", subject="x", handled_at=utcnow()))
    assert store.prune_inbox(timedelta(days=30)) == 1
    with store.engine.connect() as c:
        assert [r.event_id for r in c.execute(select(store.inbox))] == ["new"]


def test_one_relay_per_service_when_several_processes_share_a_database(make_store: Maker, bus: MemoryBus) -> None:
    """Two stores on one database stand for two processes: every event goes out, and (PostgreSQL) from one relay."""
    first, _ = make_store()
    second, _ = make_store()
    got: list[Event] = []
    bus.subscribe("claim.submitted", got.append)
    first.start()
    second.start()
    with first.session() as s:
        for i in range(20):
            s.emit("claim.submitted", {**SUBMITTED, "claimId": f"c{i}"})
    eventually(lambda: len({e.id for e in got}) == 20 and count(first, first.outbox) == 0)
    if first.engine.dialect.name == "postgresql":
        time.sleep(0.3)
        assert len(got) == 20  # the standby relay never published
        assert (first.relay.leadership._conn is None) != (second.relay.leadership._conn is None)
        leader = first if first.relay.leadership._conn is not None else second
        standby = second if leader is first else first
        leader.stop()  # the leader's process goes away: the standby takes over
        with standby.session() as s:
            s.emit("claim.submitted", {**SUBMITTED, "claimId": "after"})
        eventually(lambda: any(e.data["claimId"] == "after" for e in got))
    first.stop()
    second.stop()


def deliver_behind_one(
    store: ServiceStore, effects: Table, count: int, raising: dict[int, BaseException]
) -> tuple[dict[int, BaseException | None], list[str], list[int]]:
    """Delivery 0 holds the store's writer until deliveries 1..count-1 wait behind it (one group, on SQLite), then
    lets go. Each writes effect e<i>, or raises what `raising` gives it. Returns each delivery's outcome (None: it
    returned), the stored effects, and the deliveries whose after-commit callback ran."""
    gate, started = threading.Event(), threading.Event()
    outcome: dict[int, BaseException | None] = {}
    committed: list[int] = []

    def work(i: int) -> Callable[[Session], None]:
        def fn(s: Session) -> None:
            if i == 0:
                started.set()
                gate.wait(5)
            if i in raising:
                raise raising[i]
            s.execute(effects.insert().values(event_id=f"e{i}"))
            s.after_commit(lambda: committed.append(i))

        return fn

    def deliver(i: int) -> None:
        try:
            store.consumed._commits.run(work(i))
            outcome[i] = None
        except BaseException as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(count)]
    threads[0].start()
    assert started.wait(5)
    for t in threads[1:]:
        t.start()
    eventually(lambda: len(store.consumed._commits._waiting) == count - 1 or store.engine.dialect.name != "sqlite")
    gate.set()
    for t in threads:
        t.join(10)
    with store.engine.connect() as c:
        stored = sorted(c.execute(select(effects.c.event_id)).scalars())
    return outcome, stored, committed


def test_concurrent_deliveries_commit_together_and_a_failure_stays_its_own(make_store: Maker) -> None:
    """Group commit (SQLite): deliveries waiting on the writer share a transaction; one that fails fails alone."""
    store, effects = make_store("metrics")
    outcome, stored, commits = deliver_behind_one(store, effects, 6, {3: RuntimeError("handler 3 is broken")})
    errors = {i: exc for i, exc in outcome.items() if exc is not None}
    assert list(errors) == [3] and "handler 3 is broken" in str(errors[3])
    assert stored == ["e0", "e1", "e2", "e4", "e5"]  # every other delivery committed, exactly once
    assert sorted(commits) == [0, 1, 2, 4, 5]


def test_an_interrupted_group_reports_no_delivery_as_done_that_was_not_committed(make_store: Maker) -> None:
    """A handler that raises past Exception (SystemExit, KeyboardInterrupt) ends its group's transaction:
    every delivery in it must then fail (and be redelivered), never return as if its effect were stored."""
    store, effects = make_store("metrics")
    outcome, stored, _ = deliver_behind_one(store, effects, 4, {2: SystemExit("handler 2 pulls the plug")})
    assert outcome[0] is None and "e0" in stored and "e2" not in stored and outcome[2] is not None
    for i in (1, 3):  # done only if stored; otherwise an error, so the bus delivers it again
        assert (outcome[i] is None) == (f"e{i}" in stored), (i, outcome, stored)


def test_in_a_group_of_two_the_one_that_fails_is_the_one_told(make_store: Maker) -> None:
    store, effects = make_store("metrics")
    outcome, stored, commits = deliver_behind_one(store, effects, 3, {2: RuntimeError("handler 2 is broken")})
    assert [i for i, exc in outcome.items() if exc is not None] == [2]
    assert stored == ["e0", "e1"] and sorted(commits) == [0, 1]


def test_a_consumers_log_lines_carry_the_event_claim_and_trace(make_store: Maker, bus: MemoryBus) -> None:
    from hms.bus.tracing import log_context

    consumer, _ = make_store("metrics")
    seen: list[dict[str, object]] = []

    def record(s: Session, event: Event) -> None:
        seen.append(dict(log_context.get()))  # what hms.logs adds to every line the handler writes

    consumer.consume("claim.submitted", record, name="record")
    consumer.start()
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    bus.publish("claim.submitted", SUBMITTED, event_id="ev-1", traceparent=trace).result(10)
    assert seen == [{"event_id": "ev-1", "claim_id": "c1", "trace_id": "0af7651916cd43dd8448eb211c80319c"}]


def test_outbox_sequence_numbers_are_never_reused(make_store: Maker) -> None:
    """The relay deletes sent rows; a new row must not take an old row's number (SQLite AUTOINCREMENT)."""
    store, _ = make_store()
    with store.session() as s:
        s.emit("claim.submitted", SUBMITTED)
        s.emit("claim.submitted", SUBMITTED)
    with store.engine.begin() as c:
        top = c.execute(select(func.max(store.outbox.c.seq))).scalar_one()
        c.execute(store.outbox.delete())
    with store.session() as s:
        s.emit("claim.submitted", SUBMITTED)
    with store.engine.connect() as c:
        assert c.execute(select(store.outbox.c.seq)).scalar_one() > top


def test_a_commit_that_wrote_events_wakes_the_relay_at_once(tmp_path: Path, database_url: str, bus: MemoryBus) -> None:
    md = MetaData()
    messaging_tables(md)
    store = ServiceStore("svc", md, database_url or f"sqlite:///{tmp_path / 'svc'}.db", bus, poll_interval=30)
    with store.engine.begin() as c:
        if c.dialect.name == "postgresql":
            c.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS svc")
        md.create_all(c)
    got: list[Event] = []
    bus.subscribe("claim.submitted", got.append)
    store.start()
    try:
        time.sleep(0.2)  # the relay's first look is over; its next poll is 30 s away
        with store.session() as s:
            s.emit("claim.submitted", SUBMITTED)
        eventually(lambda: len(got) == 1, 5)  # woken by the commit, not by its poll
    finally:
        store.dispose()


def test_units_on_one_thread_reuse_a_session_but_never_share_one(make_store: Maker) -> None:
    """A thread begins its next unit on its last closed session; a unit inside a unit gets its own, and what a
    rolled-back unit asked to run after its commit never runs after the next one's."""
    store, effects = make_store()
    ran: list[str] = []
    with store.session() as outer:
        with store.session() as inner:  # (on SQLite the outer one must not have written yet: one writer)
            assert inner is not outer
            inner.execute(effects.insert(), {"event_id": "inner"})
        outer.execute(effects.insert(), {"event_id": "outer"})
    with pytest.raises(RuntimeError), store.session() as failed:
        failed.after_commit(lambda: ran.append("rolled back"))
        failed.execute(effects.insert(), {"event_id": "rolled back"})
        raise RuntimeError("refused")
    with store.session() as again:
        assert again is failed  # the same session, begun again
        again.after_commit(lambda: ran.append("committed"))
    assert ran == ["committed"]
    with store.engine.connect() as c:
        assert sorted(c.execute(select(effects.c.event_id)).scalars()) == ["inner", "outer"]


def test_a_sqlite_transaction_holds_the_write_lock_from_its_begin(tmp_path: Path) -> None:
    """Every transaction on SQLite begins IMMEDIATE: one that only read so far already keeps other writers out, so
    a reader that later writes never deadlocks with another. Checked from a plain sqlite3 connection."""
    path = tmp_path / "lock.db"
    engine = make_engine(f"sqlite:///{path}", "svc")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SELECT count(*) FROM t")  # a read: the transaction has begun
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again once that transaction ended
        other.execute("ROLLBACK")
    finally:
        other.close()
        engine.dispose()


def test_commits_leave_the_write_ahead_log_to_the_checkpointer(tmp_path: Path) -> None:
    """No unit's commit copies SQLite's log back into the database file (3-4 ms, in someone's claim, each time the
    log passes 1,000 pages at SQLite's default); a started store's checkpoint worker does, in its own thread. Checked
    from a copy of the database file alone, which holds only what was checkpointed."""
    path = tmp_path / "svc.db"
    store = ServiceStore("svc", MetaData(), f"sqlite:///{path}", MemoryBus())
    store.metadata.create_all(store.engine)  # its outbox: the relay runs once it starts
    with store.engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE t (x INTEGER)")

    def rows_in_the_file() -> int:
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())
        with sqlite3.connect(copy) as db:
            found = db.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()[0]
            return int(db.execute("SELECT count(*) FROM t").fetchone()[0]) if found else 0

    for x in range(1500):  # more than 1,000 pages of log: at least one page a commit
        with store.session() as s:
            s.execute(text("INSERT INTO t VALUES (:x)"), {"x": x})
    assert rows_in_the_file() == 0
    assert store.checkpoints is not None
    store.checkpoints.poll = 0.05
    store.start()
    try:
        eventually(lambda: rows_in_the_file() == 1500)
    finally:
        store.dispose()
