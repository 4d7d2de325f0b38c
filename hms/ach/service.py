"""ach, the payments service: its whole face. Accounts are registered here; payments are made in payments.py."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pybreaker
from sqlalchemy import select, update

from hms.bus import Event, ReplyError, iso
from hms.contracts.vocabulary import aba_checksum_ok
from hms.runtime import Consumer, Service, Unit, Worker, utcnow

from .bank import BankDeclined, SandboxBank
from .models import Account, Base, Payment, PaymentState
from .payments import Payer

log = logging.getLogger("hms.ach")


class _LogBreaker(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old: object, new: object) -> None:
        log.warning("bank breaker %s -> %s", getattr(old, "name", old), getattr(new, "name", new))


def make_bank(config: Mapping[str, Any]) -> SandboxBank:
    """The configured bank provider (only the sandbox bank ships)."""
    if config["HMS_ACH_PROVIDER"] != "sandbox":
        raise ValueError(f"HMS_ACH_PROVIDER: unknown provider {config['HMS_ACH_PROVIDER']!r}; only 'sandbox' ships")
    return SandboxBank(
        config["HMS_ACH_SANDBOX_STATEMENT"],
        latency_ms=config["HMS_ACH_SANDBOX_LATENCY_MS"],
        fail_rate=config["HMS_ACH_SANDBOX_FAIL_RATE"],
        outage_file=config["HMS_ACH_SANDBOX_OUTAGE_FILE"],
    )


class Ach:
    """The payments service in one process: the bank behind its breaker, and the payer."""

    def __init__(self, config: Mapping[str, Any], units: Callable[[], contextlib.AbstractContextManager[Unit]]):
        self.bank = make_bank(config)
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=config["HMS_ACH_BREAKER_FAIL_MAX"],
            reset_timeout=config["HMS_ACH_BREAKER_RESET_S"],
            exclude=[BankDeclined],
            listeners=[_LogBreaker()],
            name="bank",
        )
        self.payer = Payer(
            units,
            self.bank,
            self.breaker,
            retry_base=config["HMS_ACH_RETRY_BASE_S"],
            retry_max=config["HMS_ACH_RETRY_MAX_S"],
            lease=config["HMS_ACH_SEND_LEASE_S"],
            account_wait=config["HMS_ACH_ACCOUNT_WAIT_S"],
        )

    def register_account(self, s: Unit, event: Event) -> dict[str, Any]:
        """Store the citizen's account (the latest wins); only a masked number goes back."""
        req = event.data
        if not aba_checksum_ok(req["routingNumber"]):
            raise ReplyError(
                422, "Invalid routing number", "routingNumber fails the ABA checksum", "directDeposit.routingNumber"
            )
        details = {
            "routing_number": req["routingNumber"],
            "account_number": req["accountNumber"],
            "account_type": req["accountType"],
            "registered_at": utcnow(),
        }
        # Insert-or-skip, then update: two registrations for one citizen at once (retries of one claim) must not
        # collide on the key.
        s.execute(
            s.insert_new(Account.__table__).values({"citizen": req["citizen"], "id": str(uuid.uuid4()), **details})
        )
        s.execute(update(Account).where(Account.citizen == req["citizen"]).values(details))
        account = s.get_one(Account, req["citizen"])
        s.execute(
            update(Payment)
            .where(Payment.citizen == req["citizen"], Payment.state == PaymentState.PENDING)
            .values(next_attempt_at=utcnow())
        )
        s.wake("payments")  # a payment waiting for this account is due now
        return {"accountId": account.id, "account": account.masked, "accountType": account.account_type}

    def ledger(self, s: Unit, event: Event) -> dict[str, Any]:
        """A page of payments with the bank's transfer count for each claim.

        The last page also lists transfers on the bank's statement that match no payment at all.
        """
        after, limit = event.data.get("after") or "", event.data["limit"]
        transfers = self.bank.transfers_by_claim(self.payer.originator(s))
        rows = s.execute(
            select(Payment.claim_id, Payment.id, Payment.state)
            .where(Payment.claim_id > after)
            .order_by(Payment.claim_id)
            .limit(limit)
        ).all()
        last = len(rows) < limit
        known = set(s.scalars(select(Payment.claim_id))) if last else set()
        items = [{"claimId": c, "paymentId": p, "state": st, "bankTransfers": transfers.get(c, 0)} for c, p, st in rows]
        page: dict[str, Any] = {"items": items, "next": None if last else items[-1]["claimId"]}
        if last:
            page["unmatchedTransfers"] = sorted(c for c in transfers if c not in known)
        return page

    def get(self, s: Unit, event: Event) -> dict[str, Any]:
        """One claim's payment as staff see it (the account masked); 404 when there is none."""
        p = s.scalars(select(Payment).where(Payment.claim_id == event.data["claimId"])).first()
        if p is None:
            raise ReplyError(404, "Not found", "no payment for this claim", "claimId")
        account = s.get(Account, p.citizen)
        return {
            "claimId": p.claim_id,
            "paymentId": p.id,
            "state": p.state,
            "amount": float(p.amount),
            "attempts": p.attempts,
            "lastError": p.last_error,
            "bankReference": p.bank_reference,
            "sentAt": iso(p.sent_at) if p.sent_at else None,
            "account": account.masked if account else None,
            "accountType": account.account_type if account else None,
        }

    def record_payment(self, s: Unit, event: Event) -> None:
        """Phase 1: record the approved claim's payment as pending; the payer pays it."""
        claim_id = event.data["claimId"]
        if s.scalar(select(Payment.id).where(Payment.claim_id == claim_id)):
            return  # the unique constraint would refuse it too: one payment per claim
        s.add(
            Payment(
                id=str(uuid.uuid4()),
                claim_id=claim_id,
                citizen=event.data["citizen"],
                amount=event.data["amount"],
                idempotency_key=f"hms-claim-{claim_id}",
                state=PaymentState.PENDING,
                attempts=0,
                next_attempt_at=utcnow(),
                created_at=utcnow(),
                traceparent=event.traceparent,
            )
        )
        s.wake("payments")  # wake the payer when the payment is there to see

    def pay_due(self, stop: threading.Event) -> int:
        """Recover stale sends and pay every due payment (payments.py)."""
        return self.payer.run_once(stop)

    def breakers(self) -> dict[str, str]:
        return {"bank": self.breaker.current_state}


service = Service(
    "ach",
    Base.metadata,
    Ach,
    description="Direct-deposit accounts and benefit payments",
    publishes=["payment.sent", "payment.failed"],
    requests={
        "ach.accounts.register": Ach.register_account,
        "ach.payments.ledger": Ach.ledger,
        "ach.payments.get": Ach.get,
    },
    consumers=[Consumer("claim.approved", Ach.record_payment, name="on_claim_approved")],
    workers=[Worker("payments", Ach.pay_due, poll="HMS_ACH_POLL_S")],
    breakers=Ach.breakers,
)
