"""notifier: tells citizens about denials and payments."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from hms.bus import Event
from hms.runtime import Service, Unit, utcnow

from .models import Base, Notification

log = logging.getLogger("hms.notifier")
service = Service("notifier", Base.metadata, version="0.1.0", description="Citizen notifications")


@service.implementation
class Notifier:
    """Records each notification and sends the e-mail (logged here; the agency's mailer in production)."""

    def __init__(self, config: Mapping[str, Any], units: Callable[[], contextlib.AbstractContextManager[Unit]]):
        pass

    @service.consumer("claim.denied", name="notify")
    def on_claim_denied(self, s: Unit, event: Event) -> None:
        notify(s, event)

    @service.consumer("payment.sent", name="notify_paid")
    def on_payment_sent(self, s: Unit, event: Event) -> None:
        notify(s, event)


def notify(s: Unit, event: Event) -> None:
    """Record the notification and send the e-mail (logged)."""
    data = event.data
    s.add(
        Notification(
            event_id=event.id, citizen=data["citizen"], claim_id=data["claimId"], kind=event.subject, sent_at=utcnow()
        )
    )
    # The e-mail address lives in svc; delivery goes by the citizen's id through the agency's mailer.
    log.info("Email sent to citizen %s", data["citizen"], extra={"claim_id": data["claimId"], "event_id": event.id})
