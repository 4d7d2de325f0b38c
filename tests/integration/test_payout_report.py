"""The auditors' report, computed in the database, against a reference computed by hand."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from hms.bus import Event
from hms.metrics.models import Payout
from hms.runtime import Mesh, mesh_of


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def test_report_matches_a_hand_computed_reference(app: Any, mesh: Mesh) -> None:
    rng = random.Random(42)
    start = datetime(2026, 11, 20, tzinfo=UTC)
    rows = []
    for i in range(997):
        submitted = start + timedelta(days=rng.randrange(3), seconds=rng.randrange(3600))
        seconds = round(rng.expovariate(1 / 3.0), 3)
        sent = submitted + timedelta(seconds=seconds)
        rows.append(
            {
                "claim_id": f"c{i}",
                "citizen": "x",
                "submitted_at": submitted,
                "sent_at": sent,
                "payment_id": f"p{i}",
                "seconds": seconds,
                "day": sent.date().isoformat(),
            }
        )
    rows.append({"claim_id": "pending", "citizen": "x", "submitted_at": start})  # not paid yet: not counted
    with mesh.stores["metrics"].session() as s:
        s.execute(insert(Payout), rows)
    report = report_of(app)
    values = [r["seconds"] for r in rows if "seconds" in r]
    assert report["count"] == 997
    for p in (50, 90, 99):
        assert report[f"p{p}"] == nearest_rank(values, p)
    assert report["max"] == max(values)
    assert math.isclose(report["sum"], sum(values))
    assert sum(b["count"] for b in report["histogram"]) == 997
    assert report["histogram"][0] == {"le": 0.1, "count": sum(v <= 0.1 for v in values)}
    for day in report["byDay"]:
        mine = [r["seconds"] for r in rows if r.get("day") == day["day"]]
        assert (day["count"], day["p50"], day["p99"], day["max"]) == (
            len(mine),
            nearest_rank(mine, 50),
            nearest_rank(mine, 99),
            max(mine),
        )


def report_of(app: Any) -> dict[str, Any]:
    """The metrics service's report, computed in a unit of work of its own."""
    with mesh_of(app).stores["metrics"].session() as s:
        return app.extensions["hms.metrics"].report(s, Event.create("metrics.payouts.report", {}))  # type: ignore[no-any-return]


def test_an_empty_report(app: Any) -> None:
    report = report_of(app)
    assert (report["count"], report["p50"], report["max"], report["byDay"]) == (0, None, None, [])
    assert sum(b["count"] for b in report["histogram"]) == 0
