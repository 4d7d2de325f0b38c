"""Reconciliation: approved claims against payments, the bank's statement and payout records."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hms.bus import Bus, BusError

APPROVED = ("approved", "paid", "payment_failed", "returned")
PAGE = 2000
SWEEP_AGE_S = 3600  # unused bank details younger than this may belong to a submission still on its way
log = logging.getLogger("hms.gateway")


def pages(
    bus: Bus, subject: str, timeout: float, headers: dict[str, str] | None, **query: Any
) -> Iterator[dict[str, Any]]:
    """Every page of a ledger subject (asked with `query` besides the cursor), following its cursor."""
    after = None
    while True:
        page = bus.request(subject, {**query, "after": after, "limit": PAGE}, timeout=timeout, headers=headers)
        yield page
        after = page["next"]
        if after is None:
            return


@dataclass
class Reconciliation:
    """What reconcile found: gaps (each a claim id and what is wrong) and payments still in flight."""

    claims: int = 0
    approved: int = 0
    payments: int = 0
    gaps: list[tuple[str, str]] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)

    def ok(self, strict: bool = False) -> bool:
        """True when nothing is wrong (and, if strict, nothing is still in flight)."""
        return not self.gaps and not (strict and self.in_flight)


def reconcile(bus: Bus, timeout: float = 30.0, headers: dict[str, str] | None = None) -> Reconciliation:
    """Compare what svc approved, what ach paid, what the bank holds and what metrics recorded."""
    claims = {i["claimId"]: i["status"] for p in pages(bus, "svc.claims.ledger", timeout, headers) for i in p["items"]}
    payments: dict[str, dict[str, Any]] = {}
    unmatched: list[str] = []
    for p in pages(bus, "ach.payments.ledger", timeout, headers):
        payments.update({i["claimId"]: i for i in p["items"]})
        unmatched += p.get("unmatchedTransfers", [])
    recorded = {i["claimId"] for p in pages(bus, "metrics.payouts.ledger", timeout, headers) for i in p["items"]}

    r = Reconciliation(claims=len(claims), payments=len(payments))
    for claim_id, status in sorted(claims.items()):
        if status not in APPROVED:
            continue
        r.approved += 1
        pay = payments.get(claim_id)
        if pay is None:
            r.gaps.append((claim_id, f"approved ({status}) but ach has no payment"))
            continue
        state, transfers = pay["state"], pay["bankTransfers"]
        if transfers > 1:
            r.gaps.append((claim_id, f"paid {transfers} times at the bank"))
        if state == "sent":
            if transfers == 0:
                r.gaps.append((claim_id, "payment sent but not on the bank's statement"))
            if status != "paid":
                r.gaps.append((claim_id, f"payment sent but the claim is {status}"))
            if claim_id not in recorded:
                r.gaps.append((claim_id, "payment sent but metrics has no payout record"))
        elif state == "returned":  # the ACH rail: the citizen's bank sent it back
            if transfers:
                r.gaps.append((claim_id, "payment returned yet the bank holds a transfer"))
            if status != "returned":
                r.gaps.append((claim_id, f"payment returned but the claim is {status}"))
        elif state == "failed":
            if transfers:
                r.gaps.append((claim_id, "payment failed yet the bank holds a transfer"))
            if status != "payment_failed":
                r.gaps.append((claim_id, f"payment failed but the claim is {status}"))
        else:
            r.in_flight.append(claim_id)
    for claim_id, pay in sorted(payments.items()):
        if claims.get(claim_id) not in APPROVED:
            r.gaps.append((claim_id, f"ach holds a {pay['state']} payment for a claim svc did not approve"))
    for claim_id in unmatched:
        r.gaps.append((claim_id, "the bank paid a claim for which ach has no payment"))
    return r


@dataclass
class Sweep:
    """What sweep_accounts did: claim ids whose unused bank details it deleted, kept, or could not settle."""

    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def sweep_accounts(bus: Bus, older_than_s: int, timeout: float = 30.0, headers: dict[str, str] | None = None) -> Sweep:
    """Delete the bank details of submissions svc never filed (a gateway that stopped between registering them and
    submitting the claim leaves them in ach): for each account no payment uses, registered longer than
    `older_than_s` ago, svc withdraws the submission unless it filed the claim — then the details are kept, the
    claim is paid into them — and ach forgets the details (and refuses them should the registration come again)."""
    r = Sweep()
    for page in pages(bus, "ach.accounts.unused", timeout, headers, olderThanSeconds=older_than_s):
        for item in page["items"]:
            which = {"citizen": item["citizen"], "claimId": item["claimId"]}
            try:
                if bus.request("svc.claims.withdraw", which, timeout=timeout, headers=headers)["filed"]:
                    r.kept.append(item["claimId"])
                    continue
                bus.request("ach.accounts.forget", which, timeout=timeout, headers=headers)
                r.deleted.append(item["claimId"])
            except BusError as exc:
                r.failed.append((item["claimId"], str(exc)))
    return r


def sweep_round(bus: Bus, timeout: float) -> int:
    """One round of the sweep a gateway process runs on its own, every HMS_SWEEP_ACCOUNTS_EVERY_S (a background
    worker's step): `sweep_accounts` of details over `SWEEP_AGE_S` old, what it did logged. Several gateway processes
    sweeping at once do no harm: a withdrawal and a deletion done twice change nothing the second time. Returns 0:
    nothing more to do until the next round."""
    try:
        r = sweep_accounts(bus, SWEEP_AGE_S, timeout)
    except BusError as exc:  # ach or svc away for now: the next round tries again
        log.warning("unused bank details not swept this time: %s", exc)
        return 0
    for claim_id, problem in r.failed:
        log.warning("unused bank details of claim %s not swept: %s", claim_id, problem)
    if r.deleted:
        log.info("unused bank details deleted for %d submissions svc never filed", len(r.deleted))
    return 0
