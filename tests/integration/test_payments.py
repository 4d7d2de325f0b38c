"""Payments in phases: a crash between any two phases never pays twice; an open breaker makes them wait."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from hms.ach.bank import read_statement
from hms.ach.models import Payment
from hms.runtime import Mesh, utcnow
from tests.conftest import DIEGO, eventually


def approved_claim(client: FlaskClient, token: Any, sub: str = "diego") -> str:
    r = client.post("/claims", json=DIEGO, headers=token(sub))
    assert r.json["status"] == "approved"
    return str(r.json["id"])


def payment_for(mesh: Mesh, claim_id: str) -> Payment:
    with mesh.stores["ach"].session() as s:
        return s.scalars(select(Payment).where(Payment.claim_id == claim_id)).one()


def stop_worker_and_submit(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> str:
    mesh.workers["ach.payments"].stop()
    claim_id = approved_claim(client, token)
    eventually(lambda: payment_for_or_none(mesh, claim_id))
    return claim_id


def payment_for_or_none(mesh: Mesh, claim_id: str) -> Payment | None:
    with mesh.stores["ach"].session() as s:
        return s.scalars(select(Payment).where(Payment.claim_id == claim_id)).first()


def crash_mid_send(mesh: Mesh, claim_id: str) -> None:
    """Leave the payment as a worker killed during the bank call would: sending, with an old claim."""
    with mesh.stores["ach"].session() as s:
        p = s.scalars(select(Payment).where(Payment.claim_id == claim_id)).one()
        p.state, p.attempts, p.claimed_at, p.claimed_by = "sending", 1, utcnow() - timedelta(minutes=5), "dead-worker"


def test_a_crash_after_the_bank_accepted_records_the_payment_without_paying_again(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    payments = app.extensions["hms.ach"].payer
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    p = payment_for(mesh, claim_id)
    from hms.ach.bank import Transfer

    payments.bank.transfer(Transfer(p.idempotency_key, claim_id, p.amount, "011000015", "000123456789"))
    crash_mid_send(mesh, claim_id)
    payments.run_once()
    assert payment_for(mesh, claim_id).state == "sent"
    statement = read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))
    assert [t["claimId"] for t in statement] == [claim_id]
    eventually(lambda: client.get(f"/claims/{claim_id}", headers=token("diego")).json["status"] == "paid")


def test_a_crash_before_the_bank_accepted_sends_again_under_the_same_key(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    payments = app.extensions["hms.ach"].payer
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    crash_mid_send(mesh, claim_id)
    payments.run_once()  # recovery: the bank has nothing for this key, so the payment is pending again
    payments.run_once()
    assert payment_for(mesh, claim_id).state == "sent"
    statement = read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))
    assert [(t["claimId"], t["idempotencyKey"]) for t in statement] == [(claim_id, f"hms-claim-{claim_id}")]


def test_one_payment_per_claim_even_if_approved_twice(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    p = payment_for(mesh, claim_id)
    # A second claim.approved for the same claim with a new event id (not an inbox duplicate).
    mesh.bus.publish(
        "claim.approved",
        {
            "claimId": claim_id,
            "citizen": "diego",
            "amount": 600,
            "approvedAt": "2026-11-27T10:00:00Z",
            "ruleVersion": "x",
        },
        headers=mesh.credentials("svc"),
    ).result(5)
    with mesh.stores["ach"].session() as s:
        assert [q.id for q in s.scalars(select(Payment).where(Payment.claim_id == claim_id))] == [p.id]
    # Handled as a duplicate, not by the unique constraint failing over and over into a dead letter.
    time.sleep(0.5)  # the test backoff (0.01 s, 0.05 s) would have dead-lettered it by now
    assert mesh.stores["ach"].list_dead_letters() == []


def test_while_the_bank_is_down_payments_wait_behind_an_open_breaker_then_go(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh, tmp_path: Path
) -> None:
    payments = app.extensions["hms.ach"].payer
    outage = tmp_path / "down"
    outage.touch()
    payments.bank.outage_file = outage
    claims = [approved_claim(client, token, f"c{i}") for i in range(8)]
    eventually(lambda: payments.breaker.current_state == "open")
    eventually(lambda: all(payment_for_or_none(mesh, c) for c in claims))
    admin = token("root", "admin")

    # Discovery gathers the answers that come within its window; a busy ach may miss one round (seen in CI).
    def ach_listed() -> dict[str, Any] | None:
        services = client.get("/mesh/services", headers=admin).json["services"]
        return next((s for s in services if s["name"] == "ach"), None)

    ach = eventually(ach_listed)
    assert ach["breakers"] == {"bank": "open"}
    assert all(payment_for(mesh, c).state in ("pending", "sending") for c in claims)
    outage.unlink()
    eventually(lambda: all(payment_for(mesh, c).state == "sent" for c in claims), timeout=20)
    assert payments.breaker.current_state == "closed"
    statement = read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))
    assert sorted(t["claimId"] for t in statement) == sorted(claims)
    assert mesh.stores["svc"].list_dead_letters() == [] and mesh.stores["ach"].list_dead_letters() == []


def test_a_closed_account_is_an_explicit_failure(app: Flask, client: FlaskClient, token: Any) -> None:
    body = {**DIEGO, "directDeposit": {**DIEGO["directDeposit"], "accountNumber": "999900001234"}}
    r = client.post("/claims", json=body, headers=token("zoe"))
    failed = eventually(
        lambda: (
            (c := client.get(f"/claims/{r.json['id']}", headers=token("zoe")).json)["status"] == "payment_failed" and c
        )
    )
    assert failed["failureReason"] == "ACCOUNT_CLOSED"
    assert read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])) == []


def test_a_recovery_never_undoes_a_send_another_worker_has_started(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    """Two workers saw the same stale send. The first put it back and paid it; while it was at the bank, the
    second, still acting on what it saw, must not put it back to pending again (that paid twice in CI)."""
    payments = app.extensions["hms.ach"].payer
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    crash_mid_send(mesh, claim_id)
    pid = payment_for(mesh, claim_id).id
    lookup = payments.bank.lookup

    def meanwhile_another_worker_claims_it(key: str) -> str | None:
        found = lookup(key)  # nothing at the bank yet
        with mesh.stores["ach"].session() as s:  # the other worker: reset, then claimed again, now at the bank
            p = s.get(Payment, pid)
            p.state, p.claimed_at, p.claimed_by, p.attempts = "sending", utcnow(), "live-worker", 2
        return found

    payments.bank.lookup = meanwhile_another_worker_claims_it  # type: ignore[method-assign]
    try:
        payments._recover(pid)
    finally:
        payments.bank.lookup = lookup  # type: ignore[method-assign]
    p = payment_for(mesh, claim_id)
    assert (p.state, p.claimed_by) == ("sending", "live-worker")  # left to the worker that holds it
    payments._recover(pid)  # a fresh send is not stale: nothing happens either
    p = payment_for(mesh, claim_id)
    assert (p.state, p.claimed_by) == ("sending", "live-worker")
    assert read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])) == []
