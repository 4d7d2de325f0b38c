"""metrics, for auditors: its whole face. Payout time per claim, and the report."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.orm import Session

from hms.bus import Event
from hms.runtime import Consumer, Service, Unit, table_of

from .models import Base, Payout


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp from an event as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


PAYOUTS = table_of(Payout)
COMPLETE = update(PAYOUTS).where(PAYOUTS.c.claim_id == bindparam("claim"))  # with seconds and day
BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400)


class PayoutMetrics:
    """Records payout times from claim.submitted and payment.sent, and reports them."""

    def __init__(self, config: Mapping[str, Any], units: Callable[[], contextlib.AbstractContextManager[Unit]]):
        self.units = units

    def on_claim_submitted(self, s: Unit, event: Event) -> None:
        """The clock starts at the claim's own submit time."""
        self._record(s, event, submitted_at=parse_time(event.data["submittedAt"]))

    def on_payment_sent(self, s: Unit, event: Event) -> None:
        """The clock stops at the bank's acceptance time."""
        sent_at = parse_time(event.data["sentAt"])
        self._record(s, event, sent_at=sent_at, payment_id=event.data["paymentId"])

    def on_payment_settled(self, s: Unit, event: Event) -> None:
        """The money is the citizen's: the file's effective date came."""
        self._record(s, event, settled_at=parse_time(event.data["settledAt"]))

    def on_payment_returned(self, s: Unit, event: Event) -> None:
        """The citizen's bank sent it back (it may go out again, and payment.sent comes again)."""
        self._record(s, event, returned_at=parse_time(event.data["returnedAt"]), return_code=event.data["code"])

    @staticmethod
    def _record(s: Unit, event: Event, **values: Any) -> None:
        """Set these columns of the claim's payout row, made by whichever event of the claim comes first; when they
        set one end of the payout time (submitted or sent) and the row has both, the payout time too.

        Core statements, not the ORM: a consumer runs once per event, and loading and flushing an object cost
        more than the statements themselves (bench/ANALYSIS.md).
        """
        row = {"claim_id": event.data["claimId"], "citizen": event.data["citizen"], **values}
        if not values.keys() & {"submitted_at", "sent_at"}:  # a later stage: the payout time stays
            s.execute(s.upsert(PAYOUTS, update=list(values)), row)
            return
        write = s.upsert(PAYOUTS, update=list(values), returning=("submitted_at", "sent_at"))
        submitted_at, sent_at = s.execute(write, row).one()
        if submitted_at and sent_at:
            seconds = max(0.0, (sent_at - submitted_at).total_seconds())
            s.execute(COMPLETE, {"claim": row["claim_id"], "seconds": seconds, "day": sent_at.date().isoformat()})

    def ledger(self, s: Unit, event: Event) -> dict[str, Any]:
        """A page of claims whose payout time is recorded."""
        after, limit = event.data.get("after") or "", event.data["limit"]
        ids = list(
            s.scalars(
                select(Payout.claim_id)
                .where(Payout.claim_id > after, Payout.seconds.is_not(None))
                .order_by(Payout.claim_id)
                .limit(limit)
            )
        )
        return {"items": [{"claimId": i} for i in ids], "next": ids[-1] if len(ids) == limit else None}

    def report(self, s: Unit, event: Event) -> dict[str, Any]:
        """Count, p50, p90, p99, max in seconds, overall and by day, with a histogram.

        Percentiles are read off the (day, seconds) and (seconds) indexes with LIMIT/OFFSET, so the report costs
        a few index walks, not a load of every payout into memory.
        """
        recorded = Payout.seconds.is_not(None)
        days = event.data.get("days")
        since = (datetime.now(UTC) - timedelta(days=days - 1)).date().isoformat() if days else None
        scope = [recorded, Payout.day >= since] if since else [recorded]
        per_day = s.execute(
            select(Payout.day, func.count()).where(*scope).group_by(Payout.day).order_by(Payout.day)
        ).all()
        overall = self._summary(s, scope, sum(n for _, n in per_day))
        by_day = [{"day": day, **self._summary(s, [recorded, Payout.day == day], n)} for day, n in per_day]
        bounds = [func.sum(case((Payout.seconds <= b, 1), else_=0)) for b in BUCKETS]
        row = s.execute(select(func.sum(Payout.seconds), *bounds).where(*scope)).one()
        total, cumulative = overall["count"], [int(c or 0) for c in row[1:]]
        counts = [c - p for c, p in zip(cumulative, [0, *cumulative[:-1]], strict=True)]
        histogram: list[dict[str, Any]] = [{"le": b, "count": c} for b, c in zip(BUCKETS, counts, strict=True)]
        histogram.append({"le": None, "count": total - (cumulative[-1] if cumulative else 0)})
        report = {**overall, "unit": "seconds", "histogram": histogram, "sum": float(row[0] or 0.0), "byDay": by_day}
        return {**report, "stages": self._stages(s, since)}

    @staticmethod
    def _stages(s: Session, since: str | None) -> dict[str, int]:
        """How many claims are at each stage of being paid: submitted; sent (in a file, or to the sandbox bank);
        settled (the file's effective date came, and nothing came back since); returned (back from the bank, not
        sent again since)."""
        back = Payout.returned_at.is_not(None) & ((Payout.sent_at.is_(None)) | (Payout.returned_at >= Payout.sent_at))
        settled = Payout.settled_at.is_not(None) & (
            (Payout.returned_at.is_(None)) | (Payout.settled_at > Payout.returned_at)
        )
        scope = [Payout.submitted_at >= datetime.fromisoformat(since).replace(tzinfo=UTC)] if since else []
        row = s.execute(
            select(
                func.count(Payout.submitted_at),
                func.count(Payout.sent_at),
                func.sum(case((settled, 1), else_=0)),
                func.sum(case((back, 1), else_=0)),
            ).where(*scope)
        ).one()
        return {"submitted": row[0], "sent": row[1], "settled": int(row[2] or 0), "returned": int(row[3] or 0)}

    @staticmethod
    def _summary(s: Session, scope: list[Any], count: int) -> dict[str, Any]:
        """count, p50, p90, p99 and max (nearest rank) of the payouts in `scope`."""

        def nth(rank: int) -> float | None:
            # Walk the index from whichever end is nearer: p99 of a million is 10,000 steps, not 990,000.
            if rank > count / 2:
                q = select(Payout.seconds).where(*scope).order_by(Payout.seconds.desc()).offset(count - rank)
            else:
                q = select(Payout.seconds).where(*scope).order_by(Payout.seconds).offset(rank - 1)
            return s.scalar(q.limit(1))

        ranks = {p: max(1, math.ceil(p / 100 * count)) for p in (50, 90, 99)}
        return {
            "count": count,
            **{f"p{p}": nth(r) if count else None for p, r in ranks.items()},
            "max": nth(count) if count else None,
        }


service = Service(
    "metrics",
    Base.metadata,
    PayoutMetrics,
    description="Payout time per claim, for auditors",
    requests={"metrics.payouts.report": PayoutMetrics.report, "metrics.payouts.ledger": PayoutMetrics.ledger},
    consumers=[
        Consumer("claim.submitted", PayoutMetrics.on_claim_submitted, name="on_claim_submitted"),
        Consumer("payment.sent", PayoutMetrics.on_payment_sent, name="on_payment_sent"),
        Consumer("payment.settled", PayoutMetrics.on_payment_settled, name="on_payment_settled"),
        Consumer("payment.returned", PayoutMetrics.on_payment_returned, name="on_payment_returned"),
    ],
)
