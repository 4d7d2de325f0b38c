"""ach: the payments service (direct-deposit accounts, payments, the bank behind a breaker)."""

from __future__ import annotations

import logging

import pybreaker
from flask import Flask

from hms.bus.mesh import mesh_of
from hms.bus.registry import ServiceInfo

from .bank import BankDeclined, SandboxBank
from .models import Base
from .service import Payments

VERSION = "0.1.0"
log = logging.getLogger("hms.ach")


class _LogBreaker(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old: object, new: object) -> None:
        log.warning("bank breaker %s -> %s", getattr(old, "name", old), getattr(new, "name", new))


def make_bank(config: dict) -> SandboxBank:
    """The configured bank provider (only the sandbox bank ships)."""
    if config["HMS_ACH_PROVIDER"] != "sandbox":
        raise ValueError(f"HMS_ACH_PROVIDER: unknown provider {config['HMS_ACH_PROVIDER']!r}; only 'sandbox' ships")
    return SandboxBank(
        config["HMS_ACH_SANDBOX_STATEMENT"],
        latency_ms=config["HMS_ACH_SANDBOX_LATENCY_MS"],
        fail_rate=config["HMS_ACH_SANDBOX_FAIL_RATE"],
        outage_file=config["HMS_ACH_SANDBOX_OUTAGE_FILE"],
    )


def init_app(app: Flask) -> Payments:
    """Create the payments service: its store, account registration, the claim.approved consumer, the worker."""
    mesh = mesh_of(app)
    cfg = app.config
    store = mesh.store("ach", Base.metadata)
    breaker = pybreaker.CircuitBreaker(
        fail_max=cfg["HMS_ACH_BREAKER_FAIL_MAX"],
        reset_timeout=cfg["HMS_ACH_BREAKER_RESET_S"],
        exclude=[BankDeclined],
        listeners=[_LogBreaker()],
        name="bank",
    )
    payments = Payments(
        store,
        make_bank(cfg),
        breaker,
        retry_base=cfg["HMS_ACH_RETRY_BASE_S"],
        retry_max=cfg["HMS_ACH_RETRY_MAX_S"],
        lease=cfg["HMS_ACH_SEND_LEASE_S"],
        poll=cfg["HMS_ACH_POLL_S"],
        account_wait=cfg["HMS_ACH_ACCOUNT_WAIT_S"],
    )
    mesh.serve("ach.accounts.register", payments.register_account, "ach")
    mesh.serve("ach.payments.ledger", payments.ledger, "ach")
    mesh.serve("ach.payments.get", payments.get, "ach")
    store.consume("claim.approved", payments.on_claim_approved)
    mesh.on_start(payments.start, payments.stop)
    mesh.register(
        ServiceInfo(
            name="ach",
            version=VERSION,
            description="Direct-deposit accounts and benefit payments",
            publishes=["payment.sent", "payment.failed"],
            health=lambda: {"status": "ok", "outbox": store.outbox_backlog()},
            breakers=lambda: {"bank": breaker.current_state},
        )
    )
    app.extensions["hms.ach"] = payments
    return payments
