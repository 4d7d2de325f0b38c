"""notifier: tells citizens about denials and payments."""

from __future__ import annotations

import logging

from flask import Flask
from sqlalchemy.orm import Session

from hms.bus import Event
from hms.bus.mesh import mesh_of
from hms.bus.registry import ServiceInfo
from hms.bus.store import utcnow

from .models import Base, Notification

VERSION = "0.1.0"
log = logging.getLogger("hms.notifier")


def notify(s: Session, event: Event) -> None:
    """claim.denied or payment.sent: record the notification and send the e-mail (logged)."""
    data = event.data
    s.add(
        Notification(
            event_id=event.id, citizen=data["citizen"], claim_id=data["claimId"], kind=event.subject, sent_at=utcnow()
        )
    )
    # The e-mail address lives in svc; delivery goes by the citizen's id through the agency's mailer.
    log.info("Email sent to citizen %s", data["citizen"], extra={"claim_id": data["claimId"], "event_id": event.id})


def init_app(app: Flask) -> None:
    """Create the notifier: consumers of claim.denied and payment.sent."""
    mesh = mesh_of(app)
    store = mesh.store("notifier", Base.metadata)
    store.consume("claim.denied", notify)
    store.consume("payment.sent", notify)
    mesh.register(
        ServiceInfo(
            name="notifier",
            version=VERSION,
            description="Citizen notifications",
        )
    )
