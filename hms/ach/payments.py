"""Where ACH pays: each payment moves pending → sending → sent (or failed), through the bank behind a breaker.

Phase 1, recording the payment, is the claim.approved consumer (service.py). Here: phase 2 claims the payment
(compare-and-set to `sending`) and calls the bank with the payment's idempotency key; phase 3 records the
outcome and emits payment.sent or payment.failed in the same transaction. A send cut short by a crash is
recovered by asking the bank by key — never by sending blindly again.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import pybreaker
from sqlalchemy import CursorResult, bindparam, select, update

from hms.bus import iso
from hms.bus.tracing import trace_id
from hms.runtime import Unit, utcnow

from .bank import BankDeclined, BankProvider, BankUnavailable, Transfer
from .models import ACCOUNTS, PAYMENTS, Payment, PaymentState, Setting, payment_event

log = logging.getLogger("hms.ach")
NEVER = threading.Event()
PAGE = 100  # payments the payer takes a pass
# Core statements built once, not the ORM: each runs once per payment (bench/ANALYSIS.md).
TAKE = (
    update(PAYMENTS)
    .where(PAYMENTS.c.id == bindparam("payment"), PAYMENTS.c.state == PaymentState.PENDING)
    .values(state=PaymentState.SENDING, attempts=PAYMENTS.c.attempts + 1)  # with claimed_at and claimed_by
)
STALE = (
    select(PAYMENTS.c.id)
    .where(PAYMENTS.c.state == PaymentState.SENDING, PAYMENTS.c.claimed_at < bindparam("before"))
    .limit(bindparam("limit"))
)
DUE = (
    select(PAYMENTS.c.id)
    .where(PAYMENTS.c.state == PaymentState.PENDING, PAYMENTS.c.next_attempt_at <= bindparam("now"))
    .order_by(PAYMENTS.c.next_attempt_at)
    .limit(bindparam("limit"))
)
TRANSFER_OF = (
    select(PAYMENTS, ACCOUNTS.c.routing_number, ACCOUNTS.c.account_number)
    .select_from(PAYMENTS.outerjoin(ACCOUNTS, ACCOUNTS.c.id == PAYMENTS.c.account_id))
    .where(PAYMENTS.c.id == bindparam("payment"))
)
SENT = (  # with the state, the bank's reference, sent_at and last_error
    update(PAYMENTS)
    .where(PAYMENTS.c.id == bindparam("payment"), PAYMENTS.c.state != PaymentState.SENT)
    .returning(*(PAYMENTS.c[c] for c in ("id", "claim_id", "citizen", "amount", "traceparent")))
)


class Attempt(enum.StrEnum):
    """How one call of `Payer.pay` ended."""

    TAKEN = "taken"  # not pending any more: another worker has it, or it is done
    WAITING = "waiting"  # the breaker is open: due again later, not counted as an attempt
    RETRY = "retry"  # the bank was unavailable: due again after backoff
    SENT = "sent"
    FAILED = "failed"


# a stop signal that is never given (a step called directly)


class Payer:
    """Moves due payments forward; one per process, several processes may share the database."""

    def __init__(
        self,
        units: Callable[[], contextlib.AbstractContextManager[Unit]],
        bank: BankProvider,
        breaker: pybreaker.CircuitBreaker,
        *,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        lease: float = 30.0,
    ) -> None:
        self.units, self.bank, self.breaker = units, bank, breaker
        self.retry_base, self.retry_max, self.lease = retry_base, retry_max, lease
        self.instance = uuid.uuid4().hex
        self._originator: str | None = None

    def originator(self, s: Unit | None = None) -> str:
        """This deployment's id on the bank's statement, made once and kept in the ach database."""
        if self._originator is None:
            with contextlib.nullcontext(s) if s is not None else self.units() as u:
                new = {"key": "originator", "value": uuid.uuid4().hex}
                u.execute(u.insert_new(Setting.__table__).values(new))
                self._originator = u.get_one(Setting, "originator").value
        return self._originator

    def run_once(self, stop: threading.Event = NEVER, limit: int = PAGE) -> int:
        """Recover stale sends, then pay every due payment until `stop`; returns how many were tried."""
        now = utcnow()
        with self.units() as s:
            # A send older than the lease was cut short (crash, kill): its worker is gone.
            before = now - timedelta(seconds=self.lease)
            stale = list(s.execute(STALE, {"before": before, "limit": limit}).scalars())
            due = list(s.execute(DUE, {"now": now, "limit": limit}).scalars())
        for pid in stale:
            self._recover(pid)
        for pid in due:
            if stop.is_set():
                break
            self.pay(pid)
        return len(stale) + len(due)

    def pay(self, payment_id: str) -> Attempt:
        """Pay one pending payment: claim it, call the bank with its key, record the outcome."""
        with self.units() as s:
            originator = self.originator(s)
            claimed = cast(
                CursorResult[Any],
                s.execute(TAKE, {"payment": payment_id, "claimed_at": utcnow(), "claimed_by": self.instance}),
            )
            if claimed.rowcount != 1:
                return Attempt.TAKEN
            p = s.execute(TRANSFER_OF, {"payment": payment_id}).one()
            if p.routing_number is None:  # only a payment recorded before claims carried their account has none
                self._fail(s, s.get_one(Payment, payment_id), "NO_ACCOUNT")
                return Attempt.FAILED
            transfer = Transfer(
                p.idempotency_key,
                p.claim_id,
                p.amount,
                p.routing_number,
                p.account_number,
                originator,
            )
        try:
            # pybreaker holds its lock during the call, so bank calls of one process are serial;
            # an open breaker refuses at once without calling the bank.
            started = time.monotonic()
            reference = self.breaker.call(self.bank.transfer, transfer)
            if time.monotonic() - started > self.lease / 2:
                # Past the lease another worker takes this send for a crashed one; its lookup by key would
                # then race this call. Operators must keep bank calls well inside the lease.
                log.error(
                    "payment %s: the bank call took %.1fs, near the %gs send lease (HMS_ACH_SEND_LEASE_S)",
                    payment_id,
                    time.monotonic() - started,
                    self.lease,
                )
        except pybreaker.CircuitBreakerError as exc:
            self._retry(payment_id, f"circuit breaker open: {exc}", counted=False)
            return Attempt.WAITING
        except BankUnavailable as exc:
            self._retry(payment_id, str(exc), counted=True)
            return Attempt.RETRY
        except BankDeclined as exc:
            with self.units() as s:
                declined = s.get(Payment, payment_id)
                if declined is not None:
                    self._fail(s, declined, exc.code)
            return Attempt.FAILED
        self._sent(payment_id, reference)
        return Attempt.SENT

    def _recover(self, payment_id: str) -> None:
        """A send interrupted mid-way: ask the bank by key before anything else (never re-send blindly).

        Only the send that was seen stale is put back: another worker may have recovered the payment and
        started a new send meanwhile, and that one must be left alone while it is at the bank.
        """
        with self.units() as s:
            p = s.get(Payment, payment_id)
            if (
                p is None
                or p.state != PaymentState.SENDING
                or not p.claimed_at
                or p.claimed_at >= utcnow() - timedelta(seconds=self.lease)
            ):
                return
            key, claim = p.idempotency_key, (p.claimed_at, p.claimed_by)
        try:
            reference = self.bank.lookup(key)
        except BankUnavailable:
            return  # ask again later; the payment stays sending
        if reference:
            log.warning("payment %s was accepted before a crash; recording it", payment_id)
            self._sent(payment_id, reference)
        else:
            with self.units() as s:
                s.execute(
                    update(Payment)
                    .where(
                        Payment.id == payment_id,
                        Payment.state == PaymentState.SENDING,
                        Payment.claimed_at == claim[0],
                        Payment.claimed_by == claim[1],
                    )
                    .values(state=PaymentState.PENDING, next_attempt_at=utcnow(), claimed_by=None)
                )

    def _retry(self, payment_id: str, error: str, *, counted: bool) -> None:
        with self.units() as s:
            p = s.get(Payment, payment_id)
            if p is None or p.state != PaymentState.SENDING:
                return
            if not counted:
                p.attempts -= 1
            delay = min(self.retry_max, self.retry_base * 2 ** max(0, p.attempts - 1))
            if not counted:  # the breaker is open: look again when it may have half-opened
                delay = max(delay, float(self.breaker.reset_timeout) / 2)
            p.state, p.last_error, p.claimed_by = PaymentState.PENDING, error[:300], None
            p.next_attempt_at = utcnow() + timedelta(seconds=delay * random.uniform(0.8, 1.2))
        log.warning("payment %s waits: %s", payment_id, error)

    def _sent(self, payment_id: str, reference: str) -> None:
        """Phase 3: record the payment sent and publish payment.sent, in one transaction."""
        with self.units() as s:
            sent_at = utcnow()
            values = {"state": PaymentState.SENT, "bank_reference": reference, "sent_at": sent_at, "last_error": None}
            p = s.execute(SENT, {"payment": payment_id, **values}).first()
            if p is None:  # no such payment, or recorded sent already
                return
            s.emit("payment.sent", payment_event(p, sentAt=iso(sent_at)), traceparent=p.traceparent)
        log.info(
            "payment %s sent for claim %s",
            payment_id,
            p.claim_id,
            extra={"claim_id": p.claim_id, "trace_id": trace_id(p.traceparent)},
        )

    def _fail(self, s: Unit, p: Payment, reason: str) -> None:
        p.state, p.last_error = PaymentState.FAILED, reason
        s.emit(
            "payment.failed",
            {"claimId": p.claim_id, "citizen": p.citizen, "reason": reason, "attempts": p.attempts},
            traceparent=p.traceparent,
        )
        log.error("payment %s failed for claim %s: %s", p.id, p.claim_id, reason, extra={"claim_id": p.claim_id})
