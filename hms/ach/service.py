"""The payments service: accounts, and payments in phases through a circuit breaker."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pybreaker
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hms.bus import Event, ReplyError, iso
from hms.bus.store import ServiceStore, utcnow
from hms.bus.tracing import trace_id
from hms.contracts.vocabulary import aba_checksum_ok

from .bank import BankDeclined, BankProvider, BankUnavailable, Transfer
from .models import Account, Payment, Setting

log = logging.getLogger("hms.ach")


class Payments:
    """Owns accounts and payments; `run_once` moves due payments forward."""

    def __init__(
        self,
        store: ServiceStore,
        bank: BankProvider,
        breaker: pybreaker.CircuitBreaker,
        *,
        retry_base: float = 1.0,
        retry_max: float = 60.0,
        lease: float = 30.0,
        poll: float = 0.5,
        account_wait: float = 3600.0,
    ) -> None:
        self.store, self.bank, self.breaker = store, bank, breaker
        self.retry_base, self.retry_max, self.lease, self.poll = retry_base, retry_max, lease, poll
        self.account_wait = account_wait
        self.instance = uuid.uuid4().hex
        self._originator: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- accounts ---------------------------------------------------------------------------
    def register_account(self, event: Event) -> dict[str, Any]:
        """ach.accounts.register: store the citizen's account; only a masked number goes back."""
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
        with self.store.session() as s:
            # Insert-or-skip, then update: two registrations for one citizen at once (retries of one claim)
            # must not collide on the key.
            new = {"citizen": req["citizen"], "id": str(uuid.uuid4()), **details}
            s.execute(self.store.insert_new(Account.__table__).values(new))
            s.execute(update(Account).where(Account.citizen == req["citizen"]).values(details))
            account = s.get_one(Account, req["citizen"])
            s.execute(
                update(Payment)
                .where(Payment.citizen == req["citizen"], Payment.state == "pending")
                .values(next_attempt_at=utcnow())
            )
            self.store.after_commit(s, self._wake.set)
            return {"accountId": account.id, "account": account.masked, "accountType": account.account_type}

    def ledger(self, event: Event) -> dict[str, Any]:
        """ach.payments.ledger: a page of payments with the bank's transfer count for each claim.

        The last page also lists transfers on the bank's statement that match no payment at all.
        """
        after, limit = event.data.get("after") or "", event.data["limit"]
        transfers = self.bank.transfers_by_claim(self.originator())
        with self.store.session() as s:
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

    def get(self, event: Event) -> dict[str, Any]:
        """ach.payments.get: one claim's payment as staff see it (the account masked); 404 when there is none."""
        with self.store.session() as s:
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

    def originator(self) -> str:
        """This deployment's id on the bank's statement, made once and kept in the ach database."""
        if self._originator is None:
            with self.store.session() as s:
                new = {"key": "originator", "value": uuid.uuid4().hex}
                s.execute(self.store.insert_new(Setting.__table__).values(new))
                self._originator = s.get_one(Setting, "originator").value
        return self._originator

    # -- events -----------------------------------------------------------------------------
    def on_claim_approved(self, s: Session, event: Event) -> None:
        """claim.approved: record the payment as pending (phase 1); the worker pays it."""
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
                state="pending",
                attempts=0,
                next_attempt_at=utcnow(),
                created_at=utcnow(),
                traceparent=event.traceparent,
            )
        )
        self.store.after_commit(s, self._wake.set)  # wake the worker when the payment is there to see

    # -- the payment worker -----------------------------------------------------------------
    def start(self) -> None:
        """Start paying due payments in a background thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="hms-ach-payments", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the worker; unfinished payments stay recorded and resume on the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._stop.clear()  # the thread is gone; run_once may still be called directly

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("payment worker failed; retrying")
                busy = 0
            if not busy:
                self._wake.wait(self.poll)
                self._wake.clear()

    def run_once(self, limit: int = 100) -> int:
        """Recover stale sends, then pay every due payment; returns how many were tried."""
        now = utcnow()
        with self.store.session() as s:
            # A send older than the lease was cut short (crash, kill): its worker is gone.
            stale = list(
                s.scalars(
                    select(Payment.id)
                    .where(Payment.state == "sending", Payment.claimed_at < now - timedelta(seconds=self.lease))
                    .limit(limit)
                )
            )
            due = list(
                s.scalars(
                    select(Payment.id)
                    .where(Payment.state == "pending", Payment.next_attempt_at <= now)
                    .order_by(Payment.next_attempt_at)
                    .limit(limit)
                )
            )
        for pid in stale:
            self._recover(pid)
        for pid in due:
            if self._stop.is_set():
                break
            self.pay(pid)
        return len(stale) + len(due)

    def pay(self, payment_id: str) -> str:
        """Pay one pending payment: claim it, call the bank with its key, record the outcome."""
        originator = self.originator()  # before the transaction: it may write the id the first time
        with self.store.session() as s:
            claimed = s.execute(
                update(Payment)
                .where(Payment.id == payment_id, Payment.state == "pending")
                .values(state="sending", attempts=Payment.attempts + 1, claimed_at=utcnow(), claimed_by=self.instance)
            )
            if claimed.rowcount != 1:
                return "taken"
            p = s.get(Payment, payment_id)
            account = s.get(Account, p.citizen)
            if account is None and (utcnow() - p.created_at).total_seconds() > self.account_wait:
                self._fail(s, p, "NO_ACCOUNT")
                return "failed"
            transfer = account and Transfer(
                p.idempotency_key,
                p.claim_id,
                p.amount,
                account.routing_number,
                account.account_number,
                originator,
            )
        if not transfer:
            # The gateway registers the account right after the approval; registering makes this due again.
            self._retry(payment_id, "no direct-deposit account registered yet", counted=False, breaker_wait=False)
            return "waiting"
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
            return "waiting"
        except BankUnavailable as exc:
            self._retry(payment_id, str(exc), counted=True)
            return "retry"
        except BankDeclined as exc:
            with self.store.session() as s:
                p = s.get(Payment, payment_id)
                if p is not None:
                    self._fail(s, p, exc.code)
            return "failed"
        self._sent(payment_id, reference)
        return "sent"

    def _recover(self, payment_id: str) -> None:
        """A send interrupted mid-way: ask the bank by key before anything else (never re-send blindly).

        Only the send that was seen stale is put back: another worker may have recovered the payment and
        started a new send meanwhile, and that one must be left alone while it is at the bank.
        """
        with self.store.session() as s:
            p = s.get(Payment, payment_id)
            if p is None or p.state != "sending" or p.claimed_at >= utcnow() - timedelta(seconds=self.lease):
                return
            key, claim = p.idempotency_key, (p.claimed_at, p.claimed_by)
        try:
            reference = self.bank.lookup(key)
        except BankUnavailable:
            return  # ask again later; the payment stays "sending"
        if reference:
            log.warning("payment %s was accepted before a crash; recording it", payment_id)
            self._sent(payment_id, reference)
        else:
            with self.store.session() as s:
                s.execute(
                    update(Payment)
                    .where(
                        Payment.id == payment_id,
                        Payment.state == "sending",
                        Payment.claimed_at == claim[0],
                        Payment.claimed_by == claim[1],
                    )
                    .values(state="pending", next_attempt_at=utcnow(), claimed_by=None)
                )

    def _retry(self, payment_id: str, error: str, *, counted: bool, breaker_wait: bool = True) -> None:
        with self.store.session() as s:
            p = s.get(Payment, payment_id)
            if p is None or p.state != "sending":
                return
            if not counted:
                p.attempts -= 1
            delay = min(self.retry_max, self.retry_base * 2 ** max(0, p.attempts - 1))
            if not counted and breaker_wait:
                delay = max(delay, float(self.breaker.reset_timeout) / 2)
            elif not counted:
                # Waiting for the account: it usually lands milliseconds after the approval, so look again
                # soon, then less and less often.
                age = (utcnow() - p.created_at).total_seconds()
                delay = min(self.retry_max, max(0.02, age / 2))
            p.state, p.last_error, p.claimed_by = "pending", error[:300], None
            p.next_attempt_at = utcnow() + timedelta(seconds=delay * random.uniform(0.8, 1.2))
        # Waiting for the account is the normal order of things (it is registered after approval).
        log.log(logging.DEBUG if not breaker_wait else logging.WARNING, "payment %s waits: %s", payment_id, error)

    def _sent(self, payment_id: str, reference: str) -> None:
        """Phase 3: record the payment sent and publish payment.sent, in one transaction."""
        with self.store.session() as s:
            p = s.get(Payment, payment_id)
            if p is None or p.state == "sent":
                return
            p.state, p.bank_reference, p.sent_at, p.last_error = "sent", reference, utcnow(), None
            self.store.emit(
                s,
                "payment.sent",
                {
                    "claimId": p.claim_id,
                    "paymentId": p.id,
                    "citizen": p.citizen,
                    "amount": float(p.amount),
                    "sentAt": iso(p.sent_at),
                },
                traceparent=p.traceparent,
            )
        log.info(
            "payment %s sent for claim %s",
            payment_id,
            p.claim_id,
            extra={"claim_id": p.claim_id, "trace_id": trace_id(p.traceparent)},
        )

    def _fail(self, s: Session, p: Payment, reason: str) -> None:
        p.state, p.last_error = "failed", reason
        self.store.emit(
            s,
            "payment.failed",
            {"claimId": p.claim_id, "citizen": p.citizen, "reason": reason, "attempts": p.attempts},
            traceparent=p.traceparent,
        )
        log.error("payment %s failed for claim %s: %s", p.id, p.claim_id, reason, extra={"claim_id": p.claim_id})
