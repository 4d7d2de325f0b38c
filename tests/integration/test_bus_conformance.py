"""One suite for every bus engine: the same semantics or a bug in one engine."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import nats.js.errors
import pytest

from hms.bus import (
    Bus,
    BusError,
    BusTimeout,
    ContractError,
    Contracts,
    Event,
    NoResponders,
    ReplyError,
    SubjectError,
    Unverifiable,
    connect,
)
from tests.conftest import eventually
from tests.natsd import NatsServer

ENGINES = ["memory", "nats"]
EVENT_SUBJECTS = ["claim.>", "payment.>", "t.>"]  # on NATS these go to JetStream; rpc.* stays core NATS
APPROVED = {
    "claimId": "c1",
    "citizen": "diego",
    "amount": 600,
    "approvedAt": "2026-11-27T10:00:00Z",
    "ruleVersion": "1",
}


def open_bus(request: pytest.FixtureRequest, contracts: Contracts | None) -> Iterator[Bus]:
    if request.param == "memory":
        b = connect("memory://", contracts)
        yield b
        b.close()
        return
    server = request.getfixturevalue("nats_server")
    b = connect(server.url, contracts, stream="CONFORMANCE", event_subjects=EVENT_SUBJECTS)
    yield b
    b._call(b.js.delete_stream("CONFORMANCE"))  # type: ignore[attr-defined]  # the next test starts empty
    b.close()


@pytest.fixture(params=ENGINES)
def bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    yield from open_bus(request, Contracts())


@pytest.fixture(params=ENGINES)
def raw_bus(request: pytest.FixtureRequest) -> Iterator[Bus]:
    """A bus without contracts, for semantics on arbitrary subjects."""
    yield from open_bus(request, None)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    @property
    def subjects(self) -> list[str]:
        return sorted(e.subject for e in self.events)


def test_wildcards_deliver_by_nats_rules(raw_bus: Bus) -> None:
    star, rest, exact = Recorder(), Recorder(), Recorder()
    raw_bus.subscribe("t.c.*", star)
    raw_bus.subscribe("t.c.>", rest)
    raw_bus.subscribe("t.c.approved", exact)
    for subject in ("t.c.approved", "t.c.denied", "t.c.approved.late", "t.p.sent"):
        raw_bus.publish(subject, {"n": 1}).result(5)
    eventually(lambda: len(rest.events) == 3)
    assert star.subjects == ["t.c.approved", "t.c.denied"]
    assert rest.subjects == ["t.c.approved", "t.c.approved.late", "t.c.denied"]
    assert exact.subjects == ["t.c.approved"]


def test_queue_group_members_share_while_each_group_gets_everything(raw_bus: Bus) -> None:
    a1, a2, b = Recorder(), Recorder(), Recorder()
    raw_bus.subscribe("t.work", a1, queue="A")
    raw_bus.subscribe("t.work", a2, queue="A")
    raw_bus.subscribe("t.work", b, queue="B")
    for i in range(20):
        raw_bus.publish("t.work", {"i": i})
    eventually(lambda: len(b.events) == 20 and len(a1.events) + len(a2.events) == 20)
    time.sleep(0.1)  # nothing more may arrive: each message went to exactly one member of A
    assert len(a1.events) + len(a2.events) == 20
    assert a1.events and a2.events, "both members of the group took a share"
    assert sorted(e.data["i"] for e in a1.events + a2.events) == list(range(20))


def test_unsubscribe_stops_delivery(raw_bus: Bus) -> None:
    rec = Recorder()
    sub = raw_bus.subscribe("t.xy", rec)
    raw_bus.publish("t.xy", {}).result(5)
    eventually(lambda: rec.events)
    sub.unsubscribe()
    raw_bus.publish("t.xy", {}).result(5)
    time.sleep(0.1)
    assert len(rec.events) == 1


def test_request_reply(raw_bus: Bus) -> None:
    raw_bus.subscribe("rpc.double", lambda e: {"result": e.data["n"] * 2}, queue="math")
    assert raw_bus.request("rpc.double", {"n": 21}, timeout=2) == {"result": 42}


def test_request_without_responder_says_so(raw_bus: Bus) -> None:
    with pytest.raises(NoResponders, match="rpc.nobody"):
        raw_bus.request("rpc.nobody", {}, timeout=1)


def test_request_times_out(raw_bus: Bus) -> None:
    release = threading.Event()
    raw_bus.subscribe("rpc.slow", lambda e: release.wait(5) and {"late": True})
    started = time.monotonic()
    with pytest.raises(BusTimeout):
        raw_bus.request("rpc.slow", {}, timeout=0.2)
    assert time.monotonic() - started < 2
    release.set()


def test_send_request_returns_at_once_and_its_reply_waits_to_be_read(raw_bus: Bus) -> None:
    """The request goes out and the caller goes on while the responder works; `result()` then waits for the reply,
    the timeout counted from the send, not from the read; a reply dropped unread harms nothing after it."""
    release, seen = threading.Event(), threading.Semaphore(0)

    def slow(e: Event) -> dict[str, int]:
        seen.release()
        release.wait(5)
        return {"n": e.data["n"]}

    raw_bus.subscribe("rpc.later", slow, queue="q")
    started = time.monotonic()
    reply = raw_bus.send_request("rpc.later", {"n": 1}, timeout=4)
    assert time.monotonic() - started < 1 and seen.acquire(timeout=2)  # sent, and the responder has it
    release.set()
    assert reply.result() == {"n": 1}

    release.clear()
    late = raw_bus.send_request("rpc.later", {"n": 2}, timeout=0.3)
    assert seen.acquire(timeout=2)
    time.sleep(0.5)
    read = time.monotonic()
    with pytest.raises(BusTimeout):
        late.result()
    assert time.monotonic() - read < 0.2  # its time was up before it was read
    release.set()
    raw_bus.send_request("rpc.later", {"n": 3}, timeout=2)  # never read
    assert raw_bus.request("rpc.later", {"n": 4}, timeout=2) == {"n": 4}


def test_nats_requests_whose_replies_are_never_read_are_forgotten(nats_server: NatsServer) -> None:
    """Over NATS a reply comes to the requester's inbox, where it waits for its reader: a reply dropped unread is
    forgotten when it comes, and one that never comes a second after its deadline, so a process that drops replies
    keeps no memory of them. Catches: entries kept until a reader that never comes (one per dropped request)."""
    a, b = (connect(nats_server.url, None, stream="UNREAD", event_subjects=["t.>"]) for _ in range(2))
    answer = threading.Event()
    try:
        b.subscribe("rpc.echo", lambda e: answer.wait(5) and {"n": e.data["n"]}, queue="q")
        b.subscribe("rpc.quick", lambda e: {"n": e.data["n"]}, queue="q")
        time.sleep(0.2)
        answer.set()
        for n in range(20):
            a.send_request("rpc.echo", {"n": n}, timeout=2)  # answered, never read
        assert a.send_request("rpc.echo", {"n": 20}, timeout=2).result() == {"n": 20}
        eventually(lambda: not a._awaiting_reply)  # type: ignore[attr-defined]
        answer.clear()
        for n in range(5):
            a.send_request("rpc.echo", {"n": n}, timeout=0.2)  # never answered in time, never read
        assert len(a._awaiting_reply) == 5  # type: ignore[attr-defined]
        time.sleep(1.5)  # their replies are still to come (answer is not set): only the sweep forgets them
        assert a.request("rpc.quick", {"n": 6}, timeout=2) == {"n": 6}  # the next send sweeps
        assert not a._awaiting_reply  # type: ignore[attr-defined]
    finally:
        answer.set()
        a._call(a.js.delete_stream("UNREAD"))  # type: ignore[attr-defined]
        for bus in (a, b):
            bus.close()


def test_a_responder_error_reaches_the_requester(raw_bus: Bus) -> None:
    def refuse(e: Event) -> None:
        raise ReplyError(404, "Not found", "no such thing", "id")

    raw_bus.subscribe("rpc.things", refuse)
    with pytest.raises(ReplyError) as err:
        raw_bus.request("rpc.things", {}, timeout=2)
    assert (err.value.status, err.value.field) == (404, "id")


def test_request_many_gathers_every_responder(raw_bus: Bus) -> None:
    for name in ("a", "b", "c"):
        raw_bus.subscribe("rpc.who", lambda e, n=name: {"name": n})
    replies = raw_bus.request_many("rpc.who", {}, timeout=0.5)
    assert sorted(r["name"] for r in replies) == ["a", "b", "c"]


def test_a_raising_handler_stops_neither_the_others_nor_the_publisher(raw_bus: Bus) -> None:
    good = Recorder()

    def bad(e: Event) -> None:
        raise RuntimeError("handler bug")

    raw_bus.subscribe("t.e", bad, max_deliver=1)
    raw_bus.subscribe("t.e", good)
    for _ in range(3):
        raw_bus.publish("t.e", {})  # no exception reaches the publisher
    eventually(lambda: len(good.events) == 3)


def test_a_failing_handler_is_redelivered_then_succeeds(raw_bus: Bus) -> None:
    attempts: list[int] = []

    def flaky(e: Event) -> None:
        attempts.append(e.attempt)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    raw_bus.subscribe("t.flaky", flaky, max_deliver=5, backoff=[0.01, 0.02])
    raw_bus.publish("t.flaky", {}).result(5)
    eventually(lambda: len(attempts) == 3)
    time.sleep(0.2)
    assert attempts == [1, 2, 3]


def test_an_event_this_member_cannot_verify_is_handed_back_past_max_deliver_and_never_dead_lettered(
    raw_bus: Bus,
) -> None:
    """On NATS the server must not stop redelivering either (the consumer has no server-side limit)."""
    from hms.bus import Unverifiable

    attempts: list[int] = []
    dead: list[str] = []

    def lagging(e: Event) -> None:
        attempts.append(e.attempt)
        if len(attempts) <= 6:  # twice the subscription's deliveries: it learns the key only then
            raise Unverifiable("service token signed by a key this process does not know")

    raw_bus.subscribe(
        "t.u", lagging, queue="t.lag", max_deliver=3, backoff=[0.01], dead_letter=lambda e, err: dead.append(err)
    )
    raw_bus.publish("t.u", {}).result(5)
    eventually(lambda: len(attempts) == 7)
    time.sleep(0.2)
    assert attempts == [1, 2, 3, 4, 5, 6, 7] and dead == []


def test_exhausted_retries_go_to_the_dead_letter_store_and_later_events_flow(raw_bus: Bus) -> None:
    dead: list[tuple[str, str, int]] = []
    handled = Recorder()

    def poison_or_ok(e: Event) -> None:
        if e.data.get("poison"):
            raise ValueError("cannot digest")
        handled(e)

    raw_bus.subscribe(
        "t.p",
        poison_or_ok,
        max_deliver=3,
        backoff=[0.01],
        dead_letter=lambda e, err: dead.append((e.id, err, e.attempt)),
    )
    raw_bus.publish("t.p", {"poison": True}, event_id="poison-1")
    for i in range(5):
        raw_bus.publish("t.p", {"i": i})
    eventually(lambda: len(handled.events) == 5)
    eventually(lambda: dead)
    assert dead == [("poison-1", "ValueError: cannot digest", 3)]


def test_publish_refuses_a_contract_violation_before_any_handler(bus: Bus) -> None:
    rec = Recorder()
    bus.subscribe("claim.approved", rec)
    with pytest.raises(ContractError) as err:
        bus.publish("claim.approved", {**APPROVED, "amount": -5})
    assert err.value.field == "amount"
    bus.publish("claim.approved", APPROVED).result(5)
    eventually(lambda: rec.events)
    time.sleep(0.1)
    assert [e.data["amount"] for e in rec.events] == [600]


def test_publish_refuses_subjects_without_contract_and_wildcards(bus: Bus) -> None:
    with pytest.raises(ContractError, match="no contract"):
        bus.publish("claim.reopened", {})
    with pytest.raises(SubjectError):
        bus.publish("claim.*", APPROVED)


def test_requests_are_checked_against_their_contract(bus: Bus) -> None:
    calls = Recorder()
    bus.subscribe("ach.accounts.register", lambda e: calls(e) or {"ok": True})
    with pytest.raises(ContractError) as err:
        bus.request(
            "ach.accounts.register",
            {"citizen": "d", "routingNumber": "12", "accountNumber": "1234", "accountType": "checking"},
            timeout=1,
        )
    assert err.value.field == "routingNumber"
    assert calls.events == []


def test_envelope_is_cloudevents(bus: Bus) -> None:
    rec = Recorder()
    bus.subscribe("claim.approved", rec)
    bus.publish(
        "claim.approved",
        APPROVED,
        event_id="e-1",
        source="/hms/svc",
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    event = eventually(lambda: rec.events and rec.events[0])
    d = event.to_dict()
    assert d["specversion"] == "1.0" and d["id"] == "e-1" and d["source"] == "/hms/svc"
    assert d["type"] == "gov.hms.claim.approved.v1" and d["time"].endswith("Z")
    assert d["data"] == APPROVED and d["traceparent"].startswith("00-")


def test_duplicate_publishes_inside_the_window_are_delivered_once(raw_bus: Bus) -> None:
    """A relay re-sending an event (same id) within the duplicate window does not deliver it again."""
    got = Recorder()
    raw_bus.subscribe("t.dup", got, queue="dups")
    for _ in range(3):
        raw_bus.publish("t.dup", {"n": 1}, event_id="same-id").result(5)
    raw_bus.publish("t.dup", {"n": 2}, event_id="other-id").result(5)
    eventually(lambda: len(got.events) == 2)
    time.sleep(0.3)
    assert sorted(e.id for e in got.events) == ["other-id", "same-id"]


def inject_from_the_wire(bus: Bus, event: Event) -> None:
    """Deliver an envelope as another (older, buggy) publisher would: without publish-side checks."""
    import json

    payload = json.dumps(event.to_dict()).encode()
    bus._call(bus.js.publish(event.subject, payload, headers={"Nats-Msg-Id": event.id}))  # type: ignore[attr-defined]


# NATS only: the in-process bus has no wire. Everything it delivers went through its own publish, which checks the
# contract (test_publish_refuses_a_contract_violation_before_any_handler), or came from an outbox, which checked
# it in the emitting transaction (test_store.py), so it does not check again on delivery.
@pytest.mark.parametrize("bus", ["nats"], indirect=True)
def test_a_bad_event_from_the_wire_never_reaches_a_handler(bus: Bus) -> None:
    handled = Recorder()
    dead: list[tuple[str, str]] = []
    bus.subscribe("claim.submitted", handled, queue="metrics", dead_letter=lambda e, err: dead.append((e.id, err)))
    bad = Event.create(
        "claim.submitted",
        {"claimId": "c1", "citizen": "d", "submittedAt": "2026-11-27T10:00:00Z", "ssn": "123-45-6789"},
        event_id="bad-1",
    )
    inject_from_the_wire(bus, bad)
    eventually(lambda: dead)
    time.sleep(0.1)
    assert handled.events == []
    assert dead[0][0] == "bad-1" and "claim.submitted" in dead[0][1] and "ssn" in dead[0][1]


@pytest.mark.parametrize("bus", ["nats"], indirect=True)
def test_nats_a_publish_no_stream_takes_fails_and_says_so(bus: Bus) -> None:
    """The publish future is JetStream's acknowledgement: without a stream to store it, the publisher hears."""
    bus.publish("claim.approved", APPROVED).result(5)  # taken
    bus._call(bus.js.delete_stream("CONFORMANCE"))  # type: ignore[attr-defined]
    with pytest.raises(BusError, match="claim.approved.*no stream"):
        bus.publish("claim.approved", APPROVED).result(10)
    from nats.js import api

    # The stream again, for the fixture's teardown.
    bus._call(bus.js.add_stream(api.StreamConfig(name="CONFORMANCE", subjects=EVENT_SUBJECTS)))  # type: ignore[attr-defined]


def test_many_publishes_in_flight_are_each_confirmed_once(bus: Bus) -> None:
    got = Recorder()
    bus.subscribe("claim.approved", got, queue="burst")
    futures = [bus.publish("claim.approved", {**APPROVED, "claimId": f"c{i}"}) for i in range(500)]
    for f in futures:
        assert f.result(30) is None
    eventually(lambda: len(got.events) >= 500)
    time.sleep(0.2)
    # Every event arrives, and each was stored once: one event id per claim. Delivery is at least once (JetStream
    # may hand a message to a pull consumer again; the inboxes absorb that), so a second delivery of the same event
    # is allowed here; a second event for a claim, or a stray one, is not.
    ids: dict[str, set[str]] = {}
    for e in got.events:
        ids.setdefault(e.data["claimId"], set()).add(e.id)
    assert sorted(ids) == sorted(f"c{i}" for i in range(500))
    assert all(len(events) == 1 for events in ids.values()), {c: ev for c, ev in ids.items() if len(ev) > 1}


def test_update_changes_a_shared_value_atomically_and_forgets_it_after_its_ttl(raw_bus: Bus) -> None:
    """Bus.update is a compare-and-set: 5 threads adding 1 forty times each end at 200 (none lost to a race)."""

    def add_one(old: bytes | None) -> bytes:
        return str(int(old or b"0") + 1).encode()

    threads = [
        threading.Thread(target=lambda: [raw_bus.update("t_counts", "k", add_one, ttl=5) for _ in range(40)])
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert raw_bus.update("t_counts", "k", lambda old: old or b"", ttl=5) == b"200"
    assert raw_bus.update("t_counts", "other", lambda old: b"seen" if old is None else b"again", ttl=5) == b"seen"
    assert raw_bus.update("t_short", "k", lambda old: b"first" if old is None else b"kept", ttl=1) == b"first"
    time.sleep(1.6)
    assert raw_bus.update("t_short", "k", lambda old: b"first" if old is None else b"kept", ttl=1) == b"first"
    if hasattr(raw_bus, "js"):  # the next run starts with no buckets
        for bucket in ("t_counts", "t_short"):
            raw_bus._call(raw_bus.js.delete_key_value(bucket))  # type: ignore[attr-defined]


def test_update_by_two_processes_loses_no_change(nats_server: NatsServer) -> None:
    """Two connections (two processes) on one key: each starts an update from what it last wrote, which the other
    has changed since; the revision check makes it read again, so no increment is lost."""
    a, b = (connect(nats_server.url, None, stream="TWO", event_subjects=["t.>"]) for _ in range(2))

    def add_one(old: bytes | None) -> bytes:
        return str(int(old or b"0") + 1).encode()

    try:
        assert [bus.update("t_two", "k", add_one, ttl=5) for bus in (a, b, a, a, b)] == [b"1", b"2", b"3", b"4", b"5"]
        threads = [
            threading.Thread(target=lambda bus=bus: [bus.update("t_two", "k", add_one, ttl=5) for _ in range(50)])
            for bus in (a, b, a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert b.update("t_two", "k", lambda old: old or b"", ttl=5) == b"205"
    finally:
        a._call(a.js.delete_key_value("t_two"))  # type: ignore[attr-defined]
        a._call(a.js.delete_stream("TWO"))  # type: ignore[attr-defined]
        a.close()
        b.close()


def test_a_stream_whose_subjects_another_stream_holds_is_a_bus_error_naming_both(nats_server: NatsServer) -> None:
    """JetStream refuses a stream whose subjects overlap another's (an operator's stream, another deployment's on a
    shared server): the engine says so in one line naming the setting, the stream and its subjects, at once, and
    leaves no connection or loop thread behind."""
    holder = connect(nats_server.url, None, stream="HOLDER", event_subjects=["held.>"])
    threads = threading.active_count()
    try:
        started = time.monotonic()
        with pytest.raises(BusError, match=r"HMS_BUS_URL: .*cannot keep the stream TAKER \(held\.>\): .*overlap"):
            connect(nats_server.url, None, stream="TAKER", event_subjects=["held.>"])
        assert time.monotonic() - started < 5
        assert eventually(lambda: threading.active_count() <= threads, 5)
    finally:
        holder._call(holder.js.delete_stream("HOLDER"))  # type: ignore[attr-defined]
        holder.close()


def test_the_nats_engine_runs_its_loop_on_uvloop(nats_server: NatsServer) -> None:
    """The `nats` and `test` extras install uvloop (not on Windows), and the engine's loop is uvloop's: the loop
    that reads, writes and hands over every message, for less CPU than asyncio's (bench/ANALYSIS.md)."""
    import uvloop  # pinned in constraints.txt: missing here is an install that does not match the pins

    bus = connect(nats_server.url, None, stream="LOOP", event_subjects=["loop.>"])
    try:
        assert isinstance(bus._loop, uvloop.Loop)  # type: ignore[attr-defined]
        bus.subscribe("rpc.loop", lambda event: {"echo": event.data["n"]}, queue="loop")
        other = connect(nats_server.url, None, stream="LOOP", event_subjects=["loop.>"])
        try:
            assert [other.request("rpc.loop", {"n": n}, 2) for n in range(3)] == [{"echo": n} for n in range(3)]
        finally:
            other.close()
    finally:
        bus._call(bus.js.delete_stream("LOOP"))  # type: ignore[attr-defined]
        bus.close()


def test_a_bucket_deleted_under_a_running_process_is_made_again_and_one_that_cannot_be_is_a_bus_error_at_once(
    nats_server: NatsServer,
) -> None:
    """An update whose bucket an operator deleted makes the bucket again and counts from nothing (the rate limit
    keeps working without a restart). When the bucket cannot be made again (here a stream of its name takes none of
    its subjects), the update fails with a BusError naming the bucket, at once, not a timeout or a raw client error;
    the callers (the rate limit) catch BusError. A key no bucket can hold is refused before anything is sent.
    Catches: the bucket not made again (a BusError after the deletion)."""
    bus = connect(nats_server.url, None, stream="GONE", event_subjects=["gone.>"])
    counted = lambda old: b"1" if old is None else str(int(old) + 1).encode()  # noqa: E731
    try:
        assert bus.update("t_gone", "k", counted, ttl=5) == b"1"
        for bad in ("k\n", "a b", "k.*", ".k", "k.", "a..b", ""):  # never a subject of another shape on the wire
            with pytest.raises(BusError, match="is not a key-value key"):
                bus.update("t_gone", bad, counted, ttl=5)
        bus._call(bus.js.delete_key_value("t_gone"))  # type: ignore[attr-defined]
        assert bus.update("t_gone", "k", counted, ttl=5) == b"1"  # made again: the count starts anew
        assert bus.update("t_gone", "k", counted, ttl=5) == b"2"
        bus._call(bus.js.delete_key_value("t_gone"))  # type: ignore[attr-defined]
        bus._call(bus.js.add_stream(name="KV_t_gone", subjects=["elsewhere.>"]))  # type: ignore[attr-defined]
        started = time.monotonic()
        with pytest.raises(BusError, match="t_gone: the key-value store is unavailable"):
            bus.update("t_gone", "k", counted, ttl=5)
        assert time.monotonic() - started < 2
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):  # not there when the test failed before it
            bus._call(bus.js.delete_stream("KV_t_gone"))  # type: ignore[attr-defined]
        bus._call(bus.js.delete_stream("GONE"))  # type: ignore[attr-defined]
        bus.close()


def test_a_process_in_a_request_s_group_answers_its_own_requests(nats_server: NatsServer) -> None:
    """A process that is a member of a request's queue group answers its own requests, as the in-process engine
    does, without a trip through the server. Others' requests are still shared by the group's members; a request
    its own member cannot verify, and every request once that member is gone, goes to the group over NATS; its own
    member's error and slowness reach it as a remote member's would. Catches: a reply read twice sending a request
    its own member could not verify on over NATS twice."""
    a, b, c = (connect(nats_server.url, None, stream="LOCAL", event_subjects=["t.>"]) for _ in range(3))
    able = threading.Event()
    able.set()

    def a_answers(e: Event) -> dict[str, str]:
        if not able.is_set():
            raise Unverifiable("service token signed by a key this process does not know")
        if e.data.get("fail"):
            raise ReplyError(409, "Conflict", "refused by a", "fail")
        if e.data.get("slow"):
            time.sleep(1.5)
        return {"by": "a"}

    try:
        own = a.subscribe("rpc.where", a_answers, queue="svc")
        by_b: list[Event] = []
        b.subscribe("rpc.where", lambda e: by_b.append(e) or {"by": "b"}, queue="svc")
        time.sleep(0.2)
        assert [a.request("rpc.where", {}, 2)["by"] for _ in range(20)] == ["a"] * 20
        assert [b.request("rpc.where", {}, 2)["by"] for _ in range(20)] == ["b"] * 20
        assert {c.request("rpc.where", {}, 2)["by"] for _ in range(40)} == {"a", "b"}  # the group shares the rest

        with pytest.raises(ReplyError) as err:
            a.request("rpc.where", {"fail": True}, 2)
        assert (err.value.status, err.value.field) == (409, "fail")
        started = time.monotonic()
        with pytest.raises(BusTimeout):
            a.request("rpc.where", {"slow": True}, 0.3)
        assert time.monotonic() - started < 1.2

        able.clear()  # a cannot verify: b answers a's own requests
        assert [a.request("rpc.where", {}, 2)["by"] for _ in range(5)] == ["b"] * 5
        reply, sent = a.send_request("rpc.where", {}, 2), len(by_b)
        assert reply.result() == reply.result() == {"by": "b"}  # read twice (the gateway does), sent on once
        assert len(by_b) == sent + 1
        able.set()
        own.unsubscribe()  # a has left the group: b answers
        assert [a.request("rpc.where", {}, 2)["by"] for _ in range(5)] == ["b"] * 5
    finally:
        a._call(a.js.delete_stream("LOCAL"))  # type: ignore[attr-defined]
        for bus in (a, b, c):
            bus.close()


def test_a_consumer_keeps_its_pull_open_across_expiries_and_never_holds_more_than_two_batches(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NATS engine keeps a pull request open for each consumer: an idle consumer asks again when its request
    expires and still gets the next event at once; a slow one is never handed more than two batches (128 events)
    that it has not acknowledged, however many wait in the stream."""
    import hms.bus.nats as engine

    monkeypatch.setattr(engine, "PULL_EXPIRES", 0.6)
    monkeypatch.setattr(engine, "PULL_HEARTBEAT", 0.2)
    bus = connect(nats_server.url, None, stream="PULLS", event_subjects=["t.>"])
    try:
        idle = Recorder()
        bus.subscribe("t.idle", idle, queue="t.idle")
        time.sleep(2)  # three expiries of the consumer's request
        bus.publish("t.idle", {"n": 1}).result(5)
        eventually(lambda: len(idle.events) == 1, timeout=1)

        def slow(e: Event) -> None:
            time.sleep(0.005)

        bus.subscribe("t.slow", slow, queue="t.slow")
        for n in range(400):
            bus.publish("t.slow", {"n": n})
        bus.publish("t.slow", {"n": 400}).result(5)
        pending = []
        while True:
            info = bus._call(bus.js.consumer_info("PULLS", "t_slow"))  # type: ignore[attr-defined]
            pending.append(info.num_ack_pending)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            time.sleep(0.05)
        assert 0 < max(pending) <= 2 * engine.FETCH_BATCH, pending
    finally:
        bus._call(bus.js.delete_stream("PULLS"))  # type: ignore[attr-defined]
        bus.close()


def test_a_consumer_the_server_refuses_asks_again_after_a_pause_not_in_a_loop(nats_server: NatsServer) -> None:
    """A pull the server refuses outright (its consumer deleted by an operator) is asked again twice a second, not
    as fast as the loop can go; the consumer made again, events flow again."""
    bus = connect(nats_server.url, None, stream="REFUSED", event_subjects=["t.>"])
    asked: list[float] = []
    publish = bus.nc.publish  # type: ignore[attr-defined]

    async def counting(subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        if subject.startswith("$JS.API.CONSUMER.MSG.NEXT.REFUSED."):
            asked.append(time.monotonic())
        await publish(subject, payload, reply=reply, headers=headers)

    try:
        got = Recorder()
        bus.subscribe("t.r", got, queue="t.r")
        bus.nc.publish = counting  # type: ignore[attr-defined]
        info = bus._call(bus.js.consumer_info("REFUSED", "t_r"))  # type: ignore[attr-defined]
        bus._call(bus.js.delete_consumer("REFUSED", "t_r"))  # type: ignore[attr-defined]
        time.sleep(2)
        assert 1 <= len(asked) <= 8, len(asked)
        bus._call(bus.js.add_consumer("REFUSED", config=info.config))  # type: ignore[attr-defined]
        bus.publish("t.r", {"n": 1}).result(5)
        eventually(lambda: len(got.events) == 1, timeout=5)
    finally:
        bus._call(bus.js.delete_stream("REFUSED"))  # type: ignore[attr-defined]
        bus.close()
