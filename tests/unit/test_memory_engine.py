"""What the in-process engine does beyond the shared conformance suite."""

from typing import Any

from hms.bus.memory import MemoryBus


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
