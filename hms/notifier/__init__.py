"""notifier: tells citizens about denials and payments."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from hms.bus import Event
from hms.runtime import Consumer, Service, Unit, table_of, utcnow

from .models import Base, Notification

log = logging.getLogger("hms.notifier")
ADD_NOTIFICATION = table_of(Notification).insert()  # built once: it runs once per event


class Notifier:
    """Records each notification and sends the e-mail (logged here; the agency's mailer in production)."""

    def __init__(self, config: Mapping[str, Any], units: Callable[[], contextlib.AbstractContextManager[Unit]]):
        pass

    def on_claim_denied(self, s: Unit, event: Event) -> None:
        notify(s, event)

    def on_payment_sent(self, s: Unit, event: Event) -> None:
        notify(s, event)

    def on_payment_returned(self, s: Unit, event: Event) -> None:
        d = event.data
        what = f"Your bank sent back your benefit payment of ${d['amount']:,.2f}: {d['reason'].lower()} ({d['code']})."
        if d["newDetailsNeeded"]:
            what += " Sign in and give us the details of another account; we will send the money again."
        else:
            what += " We will contact you about what happens next."
        notify(s, event, what)


def notify(s: Unit, event: Event, message: str | None = None) -> None:
    """Record the notification and send the e-mail (logged)."""
    data = event.data
    row = {
        "event_id": event.id,
        "citizen": data["citizen"],
        "claim_id": data["claimId"],
        "kind": event.subject,
        "message": message,
        "sent_at": utcnow(),
    }
    s.execute(ADD_NOTIFICATION, row)  # Core: no object to flush
    # The e-mail address lives in svc; delivery goes by the citizen's id through the agency's mailer.
    extra = {"claim_id": data["claimId"], "event_id": event.id}
    log.info("Email sent to citizen %s%s", data["citizen"], f": {message}" if message else "", extra=extra)


service = Service(
    "notifier",
    Base.metadata,
    Notifier,
    description="Citizen notifications",
    consumers=[
        # Two names: one durable consumer per subject on NATS (one name for both once made payment.sent vanish).
        Consumer("claim.denied", Notifier.on_claim_denied, name="notify"),
        Consumer("payment.sent", Notifier.on_payment_sent, name="notify_paid"),
        Consumer("payment.returned", Notifier.on_payment_returned, name="notify_returned"),
    ],
)
