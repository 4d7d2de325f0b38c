"""svc, the claim service: its whole face. Submit runs the rules; decisions go out through the outbox."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, delete, exists, func, select, update

from hms.bus import Event, ReplyError, iso
from hms.bus.tracing import trace_id
from hms.contracts.vocabulary import ClaimStatus
from hms.runtime import Consumer, Service, Unit, table_of, utcnow

from .models import ID_LENGTH, Base, Claim, IdempotencyRecord, TimelineEntry, Withdrawal
from .rules import Application, RuleSet

log = logging.getLogger("hms.svc")
OPEN_STATUSES = (ClaimStatus.APPROVED, ClaimStatus.PAID, ClaimStatus.RETURNED)
# The status an outcome event moves a claim to, from the statuses it may come in (a returned payment goes out
# again once the citizen gives other bank details: paid again).
MOVES = {
    ClaimStatus.PAID: (ClaimStatus.APPROVED, ClaimStatus.RETURNED),
    ClaimStatus.PAYMENT_FAILED: (ClaimStatus.APPROVED,),
    ClaimStatus.RETURNED: (ClaimStatus.PAID,),
}
CLAIMS, TIMELINE = table_of(Claim), table_of(TimelineEntry)
STATUS_OF = select(CLAIMS.c.status).where(CLAIMS.c.id == bindparam("claim"))
MOVE = update(CLAIMS).where(CLAIMS.c.id == bindparam("claim"))  # with the status and the columns it sets
ADD_CLAIM, ADD_ENTRY = CLAIMS.insert(), TIMELINE.insert()
KEYS = table_of(IdempotencyRecord)
KEEP = KEYS.insert()
KEPT = select(KEYS.c.fingerprint, KEYS.c.response).where(
    KEYS.c.citizen == bindparam("citizen"), KEYS.c.key == bindparam("key")
)
WITHDRAWALS = table_of(Withdrawal)
SEEN = select(  # whether a claim has the id, and whether the id was withdrawn: one statement on the submit's path
    exists().where(CLAIMS.c.id == bindparam("claim")), exists().where(WITHDRAWALS.c.claim_id == bindparam("claim"))
)
WITHDRAW = WITHDRAWALS.insert()
TIMELINE_OF = (
    select(TIMELINE.c.status, TIMELINE.c.at, TIMELINE.c.detail)
    .where(TIMELINE.c.claim_id == bindparam("claim"))
    .order_by(TIMELINE.c.id)
)
OPEN_CLAIM = (
    select(CLAIMS.c.id)
    .where(CLAIMS.c.citizen == bindparam("citizen"), CLAIMS.c.status.in_(OPEN_STATUSES))
    .order_by(CLAIMS.c.submitted_at)
    .limit(1)
)


def money(value: Decimal | None) -> float | None:
    """A Decimal amount as a JSON number with cents."""
    return float(value) if value is not None else None


class ClaimService:
    """Claims, their decisions and their status, owned by `svc`."""

    def __init__(self, config: Mapping[str, Any], units: Callable[[], contextlib.AbstractContextManager[Unit]]):
        self.units, self.rules = units, RuleSet.load(config["HMS_RULES_FILE"] or None)
        self.keep_keys = timedelta(days=config["HMS_IDEMPOTENCY_RETENTION_DAYS"])

    def prune(self) -> None:
        """Forget Idempotency-Key results and withdrawals past their retention (HMS_IDEMPOTENCY_RETENTION_DAYS)."""
        log.info("svc: pruned %d idempotency keys", self.prune_idempotency(self.keep_keys))

    def prune_idempotency(self, older_than: timedelta) -> int:
        """Forget Idempotency-Key results older than `older_than` (a later retry is a new submit), and withdrawals
        as old (no request for their ids is still on its way); returns how many keys were forgotten."""
        with self.units() as s:
            s.execute(delete(Withdrawal).where(Withdrawal.withdrawn_at < utcnow() - older_than))
            old = delete(IdempotencyRecord).where(IdempotencyRecord.created_at < utcnow() - older_than)
            return cast(CursorResult[Any], s.execute(old)).rowcount

    def health(self) -> dict[str, Any]:
        return {"ruleVersion": self.rules.version}

    # -- request/reply ----------------------------------------------------------------------
    def submit(self, s: Unit, event: Event) -> dict[str, Any]:
        """Record the claim, decide it, publish both; idempotent per key.

        Version 2 (the gateway's) names the claim's id, under which ach already holds the account to pay.
        """
        req = event.data
        if len(req.get("claimId") or "") > ID_LENGTH:
            raise ReplyError(422, "Invalid request", f"claimId is longer than {ID_LENGTH} characters", "claimId")
        key = req.get("idempotencyKey")
        # One decision at a time per citizen: the one-open-claim rule reads what it then writes, and a concurrent
        # first use of the citizen's Idempotency-Key waits here, then finds the first one's record.
        s.lock(f"citizen:{req['citizen']}")
        if key:
            found = s.execute(KEPT, {"citizen": req["citizen"], "key": key}).first()
            if found is not None:
                return self._replay(found, req)
        filed, withdrawn = s.execute(SEEN, {"claim": req["claimId"]}).one() if req.get("claimId") else (False, False)
        if filed:
            raise ReplyError(409, "Claim exists", "a claim with this id was filed already", "claimId")
        if withdrawn:
            raise ReplyError(
                409, "Submission withdrawn", "this submission was withdrawn; submit the claim again", "claimId"
            )
        view = self._decide(s, req)
        if key:
            kept = {"citizen": req["citizen"], "key": key, "fingerprint": req.get("fingerprint") or ""}
            s.execute(KEEP, {**kept, "claim_id": view["id"], "response": view, "created_at": utcnow()})
        return view

    def withdraw(self, s: Unit, event: Event) -> dict[str, Any]:
        """The gateway stopped waiting for a submit's answer: say whether the claim was filed under its id, and if
        not, make sure it never is (a submit for the id arriving later is refused), so that the bank details
        registered under the id can be deleted. Under the citizen's lock: after a submit of theirs under way."""
        req = event.data
        s.lock(f"citizen:{req['citizen']}")
        filed, withdrawn = s.execute(SEEN, {"claim": req["claimId"]}).one()
        if filed:
            return {"filed": True}
        if not withdrawn:
            s.execute(WITHDRAW, {"claim_id": req["claimId"], "citizen": req["citizen"], "withdrawn_at": utcnow()})
        return {"filed": False}

    def _replay(self, found: Any, req: dict[str, Any]) -> dict[str, Any]:
        if found.fingerprint != (req.get("fingerprint") or ""):
            raise ReplyError(
                422,
                "Idempotency-Key reused",
                "this Idempotency-Key was used with a different request body",
                "Idempotency-Key",
            )
        return {**found.response, "replayed": True}

    def _decide(self, s: Unit, req: dict[str, Any]) -> dict[str, Any]:
        """Run the rules on a new claim, record it with its timeline, and emit the decision."""
        open_claim = s.execute(OPEN_CLAIM, {"citizen": req["citizen"]}).scalar()
        reasons = self.rules.evaluate(
            Application(
                separation_reason=req["separationReason"],
                weeks_worked=req["weeksWorked"],
                base_wages=Decimal(str(req["baseWages"])),
                has_open_claim=open_claim is not None,
            )
        )
        claim, timeline = self._record(s, req, reasons, open_claim)
        self._announce(s, claim, req.get("traceparent"))
        log.info(
            "claim %s %s",
            claim.id,
            claim.status,
            extra={"claim_id": claim.id, "trace_id": trace_id(req.get("traceparent"))},
        )
        return self.view(s, claim, timeline=timeline)

    def _record(
        self, s: Unit, req: dict[str, Any], reasons: list[str], open_claim: str | None
    ) -> tuple[Claim, list[dict[str, Any]]]:
        """The decided claim and its first two timeline entries, written with Core statements (the claim object
        returned is not in the session: nothing is flushed); returns the claim and the entries written."""
        now = utcnow()
        approved = not reasons
        claim = Claim(
            id=req.get("claimId") or str(uuid.uuid4()),  # v2 requests carry the id ach holds the account under
            citizen=req["citizen"],
            claimant_name=req["claimant"]["name"],
            claimant_ssn_last4=req["claimant"]["ssnLast4"],
            claimant_email=req["claimant"]["email"],
            employer=req["employer"],
            separation_reason=req["separationReason"],
            weeks_worked=req["weeksWorked"],
            base_wages=Decimal(str(req["baseWages"])),
            status=ClaimStatus.APPROVED if approved else ClaimStatus.DENIED,
            amount=self.rules.amount if approved else None,
            reasons=reasons,
            rule_version=self.rules.version,
            duplicate_of=open_claim if any(self.rules.names_open_claim(c) for c in reasons) else None,
            submitted_at=now,
            decided_at=now,
        )
        s.execute(ADD_CLAIM, {c.name: getattr(claim, c.name) for c in CLAIMS.columns})
        detail = None if approved else ",".join(reasons)
        timeline = [
            {"claim_id": claim.id, "status": ClaimStatus.SUBMITTED, "at": now, "detail": None},
            {"claim_id": claim.id, "status": claim.status, "at": now, "detail": detail},
        ]
        s.execute(ADD_ENTRY, timeline)
        return claim, timeline

    def _announce(self, s: Unit, claim: Claim, trace: str | None) -> None:
        """claim.submitted, then claim.approved or claim.denied, in the claim's transaction."""
        ts = iso(claim.decided_at or claim.submitted_at)
        base = {"claimId": claim.id, "citizen": claim.citizen}
        s.emit("claim.submitted", {**base, "submittedAt": ts}, traceparent=trace)
        if claim.status == ClaimStatus.APPROVED:
            decision: dict[str, Any] = {
                "amount": money(claim.amount),
                "approvedAt": ts,
                "ruleVersion": claim.rule_version,
            }
            s.emit("claim.approved", {**base, **decision}, traceparent=trace)
        else:
            decision = {"reasons": claim.reasons, "deniedAt": ts, "ruleVersion": claim.rule_version}
            s.emit("claim.denied", {**base, **decision}, traceparent=trace)

    def get(self, s: Unit, event: Event) -> dict[str, Any]:
        """One claim; a citizen's request sees only their own (else not found)."""
        claim = s.get(Claim, event.data["claimId"])
        if claim is None or (event.data.get("citizen") and claim.citizen != event.data["citizen"]):
            raise ReplyError(404, "Not found", "no such claim", "id")
        return self.view(s, claim)

    def list(self, s: Unit, event: Event) -> dict[str, Any]:
        """A page of claims, newest first, scoped to a citizen when given."""
        req = event.data
        page, size = req["page"], req["pageSize"]
        q = select(Claim)
        if req.get("citizen"):
            q = q.where(Claim.citizen == req["citizen"])
        if req.get("status"):
            q = q.where(Claim.status == req["status"])
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(Claim.submitted_at.desc(), Claim.id).offset((page - 1) * size).limit(size))
        return {
            "items": [self.view(s, c, timeline=False) for c in rows],
            "page": page,
            "pageSize": size,
            "total": total,
        }

    def ledger(self, s: Unit, event: Event) -> dict[str, Any]:
        """A page of (claim id, status), for reconciliation."""
        after, limit = event.data.get("after") or "", event.data["limit"]
        rows = s.execute(select(Claim.id, Claim.status).where(Claim.id > after).order_by(Claim.id).limit(limit)).all()
        items = [{"claimId": cid, "status": status} for cid, status in rows]
        return {"items": items, "next": items[-1]["claimId"] if len(items) == limit else None}

    # -- events -----------------------------------------------------------------------------
    def on_payment_sent(self, s: Unit, event: Event) -> None:
        """The claim is paid."""
        paid = event.data["paymentId"]
        self._move(s, event, ClaimStatus.PAID, paid, payment_id=paid)

    def on_payment_failed(self, s: Unit, event: Event) -> None:
        """The claim could not be paid."""
        reason = event.data["reason"]
        self._move(s, event, ClaimStatus.PAYMENT_FAILED, reason, failure_reason=reason)

    def on_payment_returned(self, s: Unit, event: Event) -> None:
        """The citizen's bank sent the payment back."""
        self._move(s, event, ClaimStatus.RETURNED, event.data["code"])

    @staticmethod
    def _move(s: Unit, event: Event, outcome: ClaimStatus, detail: str, **values: Any) -> None:
        """Move the claim an outcome applies to, with these columns and a timeline entry; nothing when it already
        has that outcome (a late duplicate).

        Core statements built once, not the ORM: a consumer runs once per event, and loading and flushing the claim
        cost more than the statements themselves (bench/ANALYSIS.md).
        """
        claim_id = event.data["claimId"]
        status = s.execute(STATUS_OF, {"claim": claim_id}).scalar()
        if status is None:
            raise LookupError(f"{event.subject}: unknown claim {claim_id}")
        if status == outcome:
            return
        if status not in MOVES[outcome]:
            raise ValueError(f"{event.subject}: claim {claim_id} is {status}, not {' or '.join(MOVES[outcome])}")
        s.execute(MOVE, {"claim": claim_id, "status": outcome, **values})
        s.execute(ADD_ENTRY, {"claim_id": claim_id, "status": outcome, "at": utcnow(), "detail": detail})

    # -- views ------------------------------------------------------------------------------
    def _reason(self, claim: Claim, code: str) -> dict[str, Any]:
        """A denial reason in plain words; the one-open-claim reason names the claim that is open."""
        reason: dict[str, Any] = {"code": code, "message": self.rules.explain(code)}
        if claim.duplicate_of and self.rules.names_open_claim(code):
            reason["claimId"] = claim.duplicate_of
        return reason

    def view(self, s: Unit, claim: Claim, *, timeline: bool | Sequence[Mapping[str, Any]] = True) -> dict[str, Any]:
        """The claim as the API shows it; `timeline` True reads its timeline, a list is the timeline (as written),
        False leaves it out."""
        out: dict[str, Any] = {
            "id": claim.id,
            "citizen": claim.citizen,
            "status": claim.status,
            "amount": money(claim.amount),
            "reasons": list(claim.reasons or []),
            "reasonDetails": [self._reason(claim, c) for c in claim.reasons or []],
            "duplicateOf": claim.duplicate_of,
            "ruleVersion": claim.rule_version,
            "employer": claim.employer,
            "claimant": {
                "name": claim.claimant_name,
                "email": claim.claimant_email,
                "ssnLast4": claim.claimant_ssn_last4,
            },
            "separationReason": claim.separation_reason,
            "weeksWorked": claim.weeks_worked,
            "baseWages": money(claim.base_wages),
            "submittedAt": iso(claim.submitted_at),
            "decidedAt": iso(claim.decided_at) if claim.decided_at else None,
            "paymentId": claim.payment_id,
            "failureReason": claim.failure_reason,
        }
        entries = s.execute(TIMELINE_OF, {"claim": claim.id}).mappings().all() if timeline is True else timeline
        if entries:
            out["timeline"] = [{"status": e["status"], "at": iso(e["at"]), "detail": e["detail"]} for e in entries]
        return out


service = Service(
    "svc",
    Base.metadata,
    ClaimService,
    description="Claims and eligibility rules",
    publishes=["claim.submitted", "claim.approved", "claim.denied"],
    requests={
        "svc.claims.submit": ClaimService.submit,
        "svc.claims.withdraw": ClaimService.withdraw,
        "svc.claims.get": ClaimService.get,
        "svc.claims.list": ClaimService.list,
        "svc.claims.ledger": ClaimService.ledger,
    },
    consumers=[
        Consumer("payment.sent", ClaimService.on_payment_sent, name="on_payment_sent"),
        Consumer("payment.failed", ClaimService.on_payment_failed, name="on_payment_failed"),
        Consumer("payment.returned", ClaimService.on_payment_returned, name="on_payment_returned"),
    ],
    chores=[ClaimService.prune],
    health=ClaimService.health,
)
