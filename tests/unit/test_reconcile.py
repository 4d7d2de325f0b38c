"""Reconciliation logic against hand-made ledgers (a fake bus answering the ledger subjects)."""

from typing import Any

from hms.gateway.reconcile import reconcile


class FakeBus:
    def __init__(self, ledgers: dict[str, list[dict[str, Any]]], unmatched: list[str] | None = None) -> None:
        self.ledgers, self.unmatched = ledgers, unmatched or []

    def request(self, subject: str, data: dict[str, Any], timeout: float = 1.0, **kw: Any) -> dict[str, Any]:
        items = [i for i in self.ledgers[subject] if i["claimId"] > (data["after"] or "")][: data["limit"]]
        page: dict[str, Any] = {"items": items, "next": items[-1]["claimId"] if len(items) == data["limit"] else None}
        if subject == "ach.payments.ledger" and page["next"] is None:
            page["unmatchedTransfers"] = self.unmatched
        return page


def pay(claim: str, state: str = "sent", transfers: int = 1) -> dict[str, Any]:
    return {"claimId": claim, "paymentId": "p-" + claim, "state": state, "bankTransfers": transfers}


def test_a_clean_ledger_has_no_gaps() -> None:
    bus = FakeBus(
        {
            "svc.claims.ledger": [
                {"claimId": "a", "status": "paid"},
                {"claimId": "b", "status": "denied"},
                {"claimId": "c", "status": "payment_failed"},
            ],
            "ach.payments.ledger": [pay("a"), pay("c", "failed", 0)],
            "metrics.payouts.ledger": [{"claimId": "a"}],
        }
    )
    r = reconcile(bus)  # type: ignore[arg-type]
    assert (r.claims, r.approved, r.payments, r.gaps, r.in_flight) == (3, 2, 2, [], [])
    assert r.ok(strict=True)


def test_every_kind_of_gap_is_named() -> None:
    bus = FakeBus(
        {
            "svc.claims.ledger": [
                {"claimId": c, "status": st}
                for c, st in [
                    ("a", "approved"),
                    ("b", "approved"),
                    ("c", "paid"),
                    ("d", "denied"),
                    ("e", "approved"),
                    ("f", "paid"),
                ]
            ],
            "ach.payments.ledger": [pay("b", "pending", 0), pay("c", "sent", 2), pay("d"), pay("e"), pay("f")],
            "metrics.payouts.ledger": [{"claimId": "c"}, {"claimId": "e"}],
        },
        unmatched=["zz"],
    )
    r = reconcile(bus)  # type: ignore[arg-type]
    assert dict((c, []) for c, _ in r.gaps).keys() == {"a", "c", "d", "e", "f", "zz"}
    text = "\n".join(f"{c}: {m}" for c, m in r.gaps)
    assert "a: approved (approved) but ach has no payment" in text
    assert "c: paid 2 times at the bank" in text
    assert "d: ach holds a sent payment for a claim svc did not approve" in text
    assert "e: payment sent but the claim is approved" in text
    assert "f: payment sent but metrics has no payout record" in text
    assert "zz: the bank paid a claim for which ach has no payment" in text
    assert r.in_flight == ["b"] and not r.ok()


def test_in_flight_fails_only_when_strict() -> None:
    bus = FakeBus(
        {
            "svc.claims.ledger": [{"claimId": "a", "status": "approved"}],
            "ach.payments.ledger": [pay("a", "sending", 0)],
            "metrics.payouts.ledger": [],
        }
    )
    r = reconcile(bus)  # type: ignore[arg-type]
    assert r.ok() and not r.ok(strict=True)


def test_ledgers_are_followed_across_pages(monkeypatch: Any) -> None:
    import hms.gateway.reconcile as rec

    monkeypatch.setattr(rec, "PAGE", 2)
    claims = [f"c{i:02d}" for i in range(7)]
    bus = FakeBus(
        {
            "svc.claims.ledger": [{"claimId": c, "status": "paid"} for c in claims],
            "ach.payments.ledger": [pay(c) for c in claims],
            "metrics.payouts.ledger": [{"claimId": c} for c in claims],
        }
    )
    r = rec.reconcile(bus)  # type: ignore[arg-type]
    assert (r.claims, r.payments, r.gaps) == (7, 7, [])
