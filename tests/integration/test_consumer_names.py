"""A consumer's name is declared, not derived: renaming its handler replays nothing on NATS."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from sqlalchemy import MetaData
from sqlalchemy.orm import Session

from hms.bus import Contracts, Event
from hms.bus.nats import NatsBus
from hms.runtime import ServiceStore, messaging_tables
from tests.conftest import eventually
from tests.natsd import NatsServer

SUBMITTED = {"citizen": "diego", "submittedAt": "2026-11-27T10:00:00Z"}


def test_renaming_a_handler_keeps_its_durable_and_inbox(tmp_path: Path, nats_server: NatsServer) -> None:
    stream = f"NAMES{uuid.uuid4().hex[:8].upper()}"
    url = f"sqlite:///{tmp_path / 'metrics.db'}"

    def run(handler: object, publish: int, seen: list[str]) -> None:
        bus = NatsBus(nats_server.url, Contracts(), stream=stream, event_subjects=["claim.>"])
        md = MetaData()
        messaging_tables(md)
        store = ServiceStore("metrics", md, url, bus, poll_interval=0.05)
        md.create_all(store.engine)
        store.consume("claim.submitted", handler, name="started")  # type: ignore[arg-type]
        store.start()
        with store.session() as s:
            for i in range(publish):
                s.emit("claim.submitted", {**SUBMITTED, "claimId": f"{handler.__name__}-{i}"})  # type: ignore[attr-defined]
        eventually(lambda: store.outbox_backlog() == 0 and len(seen) >= publish)
        time.sleep(0.5)  # room for a replay to arrive, had there been one
        store.stop()
        bus.close()
        store.engine.dispose()

    before: list[str] = []
    after: list[str] = []

    def on_claim_submitted(s: Session, event: Event) -> None:
        before.append(event.data["claimId"])

    def record_start(s: Session, event: Event) -> None:  # the same consumer, its handler renamed
        after.append(event.data["claimId"])

    try:
        run(on_claim_submitted, 3, before)
        assert sorted(before) == ["on_claim_submitted-0", "on_claim_submitted-1", "on_claim_submitted-2"]
        run(record_start, 1, after)
        # Named after the function, the renamed handler had a new durable replaying the whole stream (4 events).
        assert after == ["record_start-0"]
    finally:  # the session's server is shared: a stream left holding claim.> would refuse every later mesh's
        bus = NatsBus(nats_server.url, Contracts(), stream=stream, event_subjects=["claim.>"])
        bus._call(bus.js.delete_stream(stream))
        bus.close()
