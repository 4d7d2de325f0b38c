"""metrics: payout times for auditors."""

from __future__ import annotations

from flask import Flask

from hms.bus.mesh import mesh_of
from hms.bus.registry import ServiceInfo

from .models import Base
from .service import PayoutMetrics

VERSION = "0.1.0"


def init_app(app: Flask) -> PayoutMetrics:
    """Create the metrics service: consumers of submit and payment events, and the report responder."""
    mesh = mesh_of(app)
    store = mesh.store("metrics", Base.metadata)
    metrics = PayoutMetrics(store)
    store.consume("claim.submitted", metrics.on_claim_submitted)
    store.consume("payment.sent", metrics.on_payment_sent)
    mesh.serve("metrics.payouts.report", metrics.report, "metrics")
    mesh.serve("metrics.payouts.ledger", metrics.ledger, "metrics")
    mesh.register(
        ServiceInfo(
            name="metrics",
            version=VERSION,
            description="Payout time per claim, for auditors",
        )
    )
    app.extensions["hms.metrics"] = metrics
    return metrics
