"""ach, the payments service: its whole face. Accounts are registered here; payments are made in payments.py."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, cast

import pybreaker
from sqlalchemy import CursorResult, bindparam, delete, exists, select

from hms.bus import Event, ReplyError, iso
from hms.contracts.vocabulary import bank_details_problem
from hms.runtime import Consumer, Service, Unit, Worker, utcnow

from .bank import BankDeclined, SandboxBank
from .models import ACCOUNTS, FORGOTTEN, PAYMENTS, Account, Base, Forgotten, Notice, Payment, PaymentState
from .nacha import NachaRail
from .payments import PAGE, Payer

log = logging.getLogger("hms.ach")
ACCOUNT_OF = select(ACCOUNTS).where(ACCOUNTS.c.claim_id == bindparam("claim"))
ADD_PAYMENT = PAYMENTS.insert()
PAYMENT_OF = select(PAYMENTS.c.id).where(PAYMENTS.c.claim_id == bindparam("claim"))
FORGET = delete(ACCOUNTS).where(
    ACCOUNTS.c.claim_id == bindparam("claim"),
    ACCOUNTS.c.citizen == bindparam("citizen"),
    ~exists().where(PAYMENTS.c.claim_id == ACCOUNTS.c.claim_id),  # details a payment uses are kept
)
FORGOTTEN_OF = select(FORGOTTEN.c.citizen).where(FORGOTTEN.c.claim_id == bindparam("claim"))
UNUSED = (
    select(ACCOUNTS.c.claim_id, ACCOUNTS.c.citizen)
    .where(
        ACCOUNTS.c.claim_id > bindparam("after"),  # and not empty: accounts of claims only
        ACCOUNTS.c.registered_at < bindparam("before"),
        ~exists().where(PAYMENTS.c.claim_id == ACCOUNTS.c.claim_id),
    )
    .order_by(ACCOUNTS.c.claim_id)
    .limit(bindparam("limit"))
)


class _LogBreaker(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old: object, new: object) -> None:
        log.warning("bank breaker %s -> %s", getattr(old, "name", old), getattr(new, "name", new))


def make_bank(config: Mapping[str, Any]) -> SandboxBank:
    """The sandbox bank (the default provider; the nacha provider sends files instead, nacha.py)."""
    return SandboxBank(
        config["HMS_ACH_SANDBOX_STATEMENT"],
        latency_ms=config["HMS_ACH_SANDBOX_LATENCY_MS"],
        fail_rate=config["HMS_ACH_SANDBOX_FAIL_RATE"],
        outage_file=config["HMS_ACH_SANDBOX_OUTAGE_FILE"],
    )


class Ach:
    """The payments service in one process: the bank behind its breaker and the payer, or the NACHA rail."""

    def __init__(self, config: Mapping[str, Any], units: Callable[[], contextlib.AbstractContextManager[Unit]]):
        self.units, self.keep_forgotten = units, timedelta(days=config["HMS_IDEMPOTENCY_RETENTION_DAYS"])
        self.rail = NachaRail(config, units) if config["HMS_ACH_PROVIDER"] == "nacha" else None
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
        )

    def register_account(self, s: Unit, event: Event) -> dict[str, Any]:
        """Store the account a claim is to be paid into, before the claim is decided; only a masked number goes back.

        Version 2 (the gateway's) names the claim: a retry of it finds the account stored the first time, and one
        arriving after the details under that id were deleted (`forget_account`) is refused. Under the claim's lock:
        after a deletion under way.
        """
        req = event.data
        wrong = bank_details_problem(req)
        if wrong:
            raise ReplyError(422, "Invalid bank details", " ".join(wrong), f"directDeposit.{wrong[0]}")
        if req.get("claimId") is not None:
            s.lock(f"claim:{req['claimId']}")
            if s.execute(FORGOTTEN_OF, {"claim": req["claimId"]}).first():
                raise ReplyError(
                    409, "Registration withdrawn", "the submission these details came with was withdrawn", "claimId"
                )
        row = {
            "id": str(uuid.uuid4()),
            "citizen": req["citizen"],
            "claim_id": req.get("claimId"),
            "routing_number": req["routingNumber"],
            "account_number": req["accountNumber"],
            "account_type": req["accountType"],
            "registered_at": utcnow(),
        }
        if s.execute(s.insert_new(ACCOUNTS), row).first():
            account: Account | None = Account(**row)  # stored as given (not added to the session: nothing to flush)
        else:  # the claim has its account already: a retry, or another citizen's claim id
            found = s.execute(ACCOUNT_OF, {"claim": row["claim_id"]}).first()
            account = Account(**found._mapping) if found else None
        if account is None or account.citizen != req["citizen"]:
            raise ReplyError(409, "Claim exists", "this claim id belongs to another citizen", "claimId")
        return {"accountId": account.id, "account": account.masked, "accountType": account.account_type}

    def ledger(self, s: Unit, event: Event) -> dict[str, Any]:
        """A page of payments with the bank's transfer count for each claim.

        The last page also lists transfers on the bank's statement that match no payment at all.
        """
        after, limit = event.data.get("after") or "", event.data["limit"]
        if self.rail is not None:  # the entries of the files in the drop
            transfers = self.rail.transfers_by_claim(s)
        else:
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
        account = s.get(Account, p.account_id) if p.account_id else None
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
            "returnCode": p.return_code,
            "notices": [  # returns and notifications of change from the bank (the ACH rail)
                {"code": n.code, "detail": n.detail, "receivedAt": iso(n.received_at)}
                for n in s.scalars(select(Notice).where(Notice.payment_id == p.id).order_by(Notice.id))
            ],
        }

    def reissue(self, s: Unit, event: Event) -> dict[str, Any]:
        """New bank details for a payment its bank sent back (R02, R03, R04): paid again at the next cut-off."""
        if self.rail is None:
            raise ReplyError(409, "No ACH rail", "payments here go through the sandbox bank, which returns none")
        return self.rail.reissue(s, event.data)

    def record_payment(self, s: Unit, event: Event) -> None:
        """Phase 1: record the approved claim's payment as pending; the payer pays it.

        Core statements built once, not the ORM: this runs once per approved claim (bench/ANALYSIS.md).
        """
        claim_id, citizen = event.data["claimId"], event.data["citizen"]
        if s.execute(PAYMENT_OF, {"claim": claim_id}).first():
            return  # the unique constraint would refuse it too: one payment per claim
        account = s.execute(ACCOUNT_OF, {"claim": claim_id}).first()
        account_id = account.id if account else None
        if account_id is None:
            # A claim submitted under contract v1 (before claims carried their account): the citizen's latest.
            latest = select(Account.id).where(Account.citizen == citizen, Account.claim_id.is_(None))
            account_id = s.scalar(latest.order_by(Account.registered_at.desc()).limit(1))
        if account_id is None:
            raise LookupError(f"claim.approved: no account registered for claim {claim_id}")  # retried, then dead
        now = utcnow()
        payment = {
            "id": str(uuid.uuid4()),
            "claim_id": claim_id,
            "citizen": citizen,
            "account_id": account_id,
            "amount": event.data["amount"],
            "idempotency_key": f"hms-claim-{claim_id}",
            "state": PaymentState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "traceparent": event.traceparent,
        }
        s.execute(ADD_PAYMENT, payment)
        s.wake("payments")  # wake the payer when the payment is there to see

    def forget_account(self, s: Unit, event: Event) -> dict[str, Any]:
        """Delete the bank details given for a claim that will never be paid (they came before the decision): a
        denied claim's (`claim.denied`), or those of a submission svc did not file (`ach.accounts.forget`, from the
        gateway: the rate limit refused it, svc refused the request or answered with an earlier claim under its
        Idempotency-Key, no svc process got it, or the registration or the submit was not answered in time). Only
        the citizen's own, and never details a payment uses. Unless such details are kept, the id is remembered as
        forgotten, so a registration under it arriving later (one not answered in time) stores nothing."""
        req = {"claim": event.data["claimId"], "citizen": event.data["citizen"]}
        s.lock(f"claim:{req['claim']}")
        gone = s.execute(FORGET, req).rowcount
        if not s.execute(ACCOUNT_OF, req).first():  # none left (deleted, or never there): remember the id
            s.execute(
                s.insert_new(FORGOTTEN), {"claim_id": req["claim"], "citizen": req["citizen"], "forgotten_at": utcnow()}
            )
        return {"forgotten": gone > 0}

    def unused(self, s: Unit, event: Event) -> dict[str, Any]:
        """A page of the bank details registered for a claim longer than `olderThanSeconds` ago that no payment
        uses, in claim-id order: those of filed claims not yet paid, and those of submissions svc never filed (a
        gateway stopped between the registration and the submit). Every gateway's hourly sweep sorts them out, and
        `hms audit sweep-accounts` on demand."""
        req = event.data
        before = utcnow() - timedelta(seconds=req["olderThanSeconds"])
        rows = s.execute(UNUSED, {"after": req.get("after") or "", "before": before, "limit": req["limit"]}).all()
        items = [{"claimId": claim_id, "citizen": citizen} for claim_id, citizen in rows]
        return {"items": items, "next": items[-1]["claimId"] if len(items) == req["limit"] else None}

    def prune(self) -> None:
        """Forget forgotten claim ids past HMS_IDEMPOTENCY_RETENTION_DAYS (no registration for them is on its way)."""
        log.info("ach: pruned %d forgotten claim ids", self.prune_forgotten(self.keep_forgotten))

    def prune_forgotten(self, older_than: timedelta) -> int:
        """Delete the records of ids forgotten more than `older_than` ago; returns how many."""
        with self.units() as s:
            old = delete(Forgotten).where(Forgotten.forgotten_at < utcnow() - older_than)
            return cast(CursorResult[Any], s.execute(old)).rowcount

    def pay_due(self, stop: threading.Event) -> int:
        """Recover stale sends and pay every due payment (payments.py), or make the NACHA file due (nacha.py).

        The payer's worker goes again at once only when a page was full. A payment recorded meanwhile wakes it
        (`Unit.wake`) and one that comes due later is found by its poll, so a pass after each payment that
        finds nothing is not needed.
        """
        if self.rail is not None:
            return self.rail.run_once(stop)
        tried = self.payer.run_once(stop)
        return tried if tried >= PAGE else 0

    def breakers(self) -> dict[str, str]:
        return {"bank": self.breaker.current_state}


service = Service(
    "ach",
    Base.metadata,
    Ach,
    description="Direct-deposit accounts and benefit payments",
    publishes=["payment.sent", "payment.failed", "payment.returned", "payment.settled"],
    requests={
        "ach.accounts.register": Ach.register_account,
        "ach.accounts.forget": Ach.forget_account,
        "ach.accounts.unused": Ach.unused,
        "ach.payments.ledger": Ach.ledger,
        "ach.payments.get": Ach.get,
        "ach.payments.reissue": Ach.reissue,
    },
    consumers=[
        Consumer("claim.approved", Ach.record_payment, name="on_claim_approved"),
        Consumer("claim.denied", Ach.forget_account, name="on_claim_denied"),
    ],
    workers=[Worker("payments", Ach.pay_due, poll="HMS_ACH_POLL_S")],
    chores=[Ach.prune],
    breakers=Ach.breakers,
)
