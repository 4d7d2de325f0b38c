"""svc: the claim service (claims, eligibility rules, decisions)."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask

from hms.bus.mesh import mesh_of
from hms.bus.registry import ServiceInfo

from .models import Base
from .rules import RuleSet
from .service import ClaimService

VERSION = "0.1.0"


def init_app(app: Flask) -> ClaimService:
    """Create the claim service's store, serve its requests and consume payment outcomes."""
    mesh = mesh_of(app)
    store = mesh.store("svc", Base.metadata)
    service = ClaimService(store, RuleSet.load(app.config["HMS_RULES_FILE"] or None))
    mesh.serve("svc.claims.submit", service.submit, "svc")
    mesh.serve("svc.claims.get", service.get, "svc")
    mesh.serve("svc.claims.list", service.list, "svc")
    mesh.serve("svc.claims.ledger", service.ledger, "svc")
    store.consume("payment.sent", service.on_payment_sent)
    store.consume("payment.failed", service.on_payment_failed)
    mesh.register(
        ServiceInfo(
            name="svc",
            version=VERSION,
            description="Claims and eligibility rules",
            publishes=["claim.submitted", "claim.approved", "claim.denied"],
            health=lambda: {"status": "ok", "ruleVersion": service.rules.version, "outbox": store.outbox_backlog()},
        )
    )
    keep = timedelta(days=app.config["HMS_IDEMPOTENCY_RETENTION_DAYS"])
    store.housekeeping(lambda: service.prune_idempotency(keep))
    app.extensions["hms.svc"] = service
    return service
