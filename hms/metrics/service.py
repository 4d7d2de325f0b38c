"""Payout time per claim and the auditors' report."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hms.bus import Event
from hms.bus.store import ServiceStore

from .models import Payout


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp from an event as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of already sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    """count, p50, p90, p99 and max of sorted payout times, in seconds."""
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": values[-1] if values else None,
    }


BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86400)


def histogram(sorted_values: list[float]) -> list[dict[str, Any]]:
    """Counts of payout times per bucket (upper bounds in seconds; the last bucket is unbounded)."""
    counts, i = [], 0
    for bound in BUCKETS:
        start = i
        while i < len(sorted_values) and sorted_values[i] <= bound:
            i += 1
        counts.append({"le": bound, "count": i - start})
    counts.append({"le": None, "count": len(sorted_values) - i})
    return counts


class PayoutMetrics:
    """Records payout times from claim.submitted and payment.sent, and reports them."""

    def __init__(self, store: ServiceStore) -> None:
        self.store = store

    def on_claim_submitted(self, s: Session, event: Event) -> None:
        """claim.submitted: the clock starts at the claim's own submit time."""
        payout = self._payout(s, event)
        payout.submitted_at = parse_time(event.data["submittedAt"])
        self._complete(payout)

    def on_payment_sent(self, s: Session, event: Event) -> None:
        """payment.sent: the clock stops at the bank's acceptance time."""
        payout = self._payout(s, event)
        payout.sent_at, payout.payment_id = parse_time(event.data["sentAt"]), event.data["paymentId"]
        self._complete(payout)

    def _payout(self, s: Session, event: Event) -> Payout:
        payout = s.get(Payout, event.data["claimId"])
        if payout is None:
            payout = Payout(claim_id=event.data["claimId"], citizen=event.data["citizen"])
            s.add(payout)
        return payout

    @staticmethod
    def _complete(payout: Payout) -> None:
        if payout.submitted_at and payout.sent_at:
            payout.seconds = max(0.0, (payout.sent_at - payout.submitted_at).total_seconds())
            payout.day = payout.sent_at.date().isoformat()

    def ledger(self, event: Event) -> dict[str, Any]:
        """metrics.payouts.ledger: a page of claims whose payout time is recorded."""
        after, limit = event.data.get("after") or "", event.data["limit"]
        with self.store.session() as s:
            ids = list(
                s.scalars(
                    select(Payout.claim_id)
                    .where(Payout.claim_id > after, Payout.seconds.is_not(None))
                    .order_by(Payout.claim_id)
                    .limit(limit)
                )
            )
        return {"items": [{"claimId": i} for i in ids], "next": ids[-1] if len(ids) == limit else None}

    def report(self, event: Event) -> dict[str, Any]:
        """metrics.payouts.report: count, p50, p90, p99, max in seconds, overall and by day."""
        q = select(Payout.day, Payout.seconds).where(Payout.seconds.is_not(None))
        days = event.data.get("days")
        if days:
            q = q.where(Payout.day >= (datetime.now(UTC) - timedelta(days=days - 1)).date().isoformat())
        with self.store.session() as s:
            rows = s.execute(q.order_by(Payout.seconds)).all()
        by_day: dict[str, list[float]] = defaultdict(list)
        for day, seconds in rows:
            by_day[day].append(seconds)
        values = [seconds for _, seconds in rows]
        overall = summary(values)
        return {
            **overall,
            "unit": "seconds",
            "histogram": histogram(values),
            "sum": sum(values),
            "byDay": [{"day": day, **summary(values)} for day, values in sorted(by_day.items())],
        }
