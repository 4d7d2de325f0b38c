"""What the in-process engine does beyond the shared conformance suite."""

from typing import Any

from hms.bus import Contracts, Event
from hms.bus.memory import MemoryBus
from tests.conftest import eventually


def test_a_bad_event_from_the_wire_never_reaches_a_handler() -> None:
    bus = MemoryBus(Contracts())
    handled: list[Event] = []
    dead: list[tuple[str, str]] = []
    bus.subscribe("claim.submitted", handled.append, dead_letter=lambda e, err: dead.append((e.id, err)))
    bad = Event.create(
        "claim.submitted", {"claimId": "c1", "citizen": "d", "submittedAt": "2026", "ssn": "123"}, event_id="bad-1"
    )
    # Deliver as the wire would, bypassing publish-side validation (an older or buggy publisher).
    for signal in bus._signals_for("claim.submitted"):
        signal.send(bus, event=bad, settlement=None)
    eventually(lambda: dead)
    assert handled == []
    assert dead[0][0] == "bad-1" and "claim.submitted" in dead[0][1]
    bus.close()


def test_publish_returns_before_the_handler_finishes() -> None:
    import threading

    bus = MemoryBus()
    release = threading.Event()
    done: list[Any] = []
    bus.subscribe("slow.work", lambda e: release.wait(5) and done.append(e.id))
    ack = bus.publish("slow.work", {})
    assert not ack.done() and done == []
    release.set()
    ack.result(5)
    assert len(done) == 1
    bus.close()
