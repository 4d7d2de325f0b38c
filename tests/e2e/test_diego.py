"""Diego's claim from web to bank, through the HTTP API of a running mesh."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from hms.ach.bank import read_statement
from hms.runtime import Mesh
from tests.conftest import DIEGO, eventually


def claim(client: FlaskClient, headers: dict[str, str], claim_id: str) -> dict[str, Any]:
    r = client.get(f"/claims/{claim_id}", headers=headers)
    assert r.status_code == 200, r.json
    return r.json  # type: ignore[no-any-return]


BOTH_BUSES = pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)


@BOTH_BUSES
def test_diego_is_approved_then_paid_exactly_once(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    diego = token("diego")
    r = client.post("/claims", json=DIEGO, headers=diego)
    assert r.status_code == 201, r.json
    body = r.json
    assert body["status"] == "approved" and body["amount"] == 600 and body["reasons"] == []
    assert body["account"] == "****6789"
    assert "accountNumber" not in str(body) and "000123456789" not in str(body)
    assert r.headers["Location"] == f"/claims/{body['id']}"

    paid = eventually(lambda: (c := claim(client, diego, body["id"]))["status"] == "paid" and c)
    assert [t["status"] for t in paid["timeline"]] == ["submitted", "approved", "paid"]
    assert paid["paymentId"]

    statement = read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))
    assert [(t["claimId"], t["amount"], t["account"]) for t in statement] == [(body["id"], "600.00", "****6789")]
    assert statement[0]["idempotencyKey"] == f"hms-claim-{body['id']}"

    auditor = token("ann", "auditor")
    report = eventually(lambda: (rep := client.get("/audit/payouts", headers=auditor).json)["count"] == 1 and rep)
    assert report["p50"] is not None and report["p50"] >= 0 and report["byDay"][0]["count"] == 1

    # The notifier tells Diego he was paid. Over NATS this failed silently before consumers had names of their
    # own: both notifier consumers shared one durable, filtered to claim.denied, so payment.sent never arrived.
    from hms.notifier.models import Notification

    def told() -> list[str]:
        with mesh.stores["notifier"].session() as s:
            return list(s.scalars(select(Notification.kind).where(Notification.claim_id == body["id"])))

    assert eventually(told) == ["payment.sent"]


@BOTH_BUSES
def test_a_quit_claim_with_5_weeks_is_denied_and_the_citizen_notified(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hms")
    rosa = token("rosa")
    r = client.post("/claims", json={**DIEGO, "separationReason": "quit", "weeksWorked": 5}, headers=rosa)
    assert r.status_code == 201, r.json
    assert r.json["status"] == "denied" and r.json["amount"] is None
    assert r.json["reasons"] == ["INELIGIBLE_SEPARATION", "INSUFFICIENT_WEEKS"]
    assert all(len(d["message"]) > 20 for d in r.json["reasonDetails"])
    assert "account" not in r.json  # a denied claim hands no bank details to ach

    from hms.notifier.models import Notification

    store = mesh.stores["notifier"]

    def notified() -> list[Notification]:
        with store.session() as s:
            return list(s.scalars(select(Notification).where(Notification.claim_id == r.json["id"])))

    [note] = eventually(notified)
    assert (note.kind, note.citizen) == ("claim.denied", "rosa")
    assert "Email sent to citizen rosa" in caplog.text
    assert read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])) == []


def test_a_second_claim_is_denied_as_duplicate_and_names_the_first(client: FlaskClient, token: Any) -> None:
    diego = token("diego")
    first = client.post("/claims", json=DIEGO, headers=diego).json
    assert first["status"] == "approved" and first["duplicateOf"] is None
    second = client.post("/claims", json=DIEGO, headers=diego).json
    assert (second["status"], second["reasons"]) == ("denied", ["DUPLICATE_CLAIM"])
    assert second["duplicateOf"] == first["id"]
    assert second["reasonDetails"] == [
        {"code": "DUPLICATE_CLAIM", "message": "You already have an approved or paid claim.", "claimId": first["id"]}
    ]
    assert client.get(f"/claims/{second['id']}", headers=diego).json["duplicateOf"] == first["id"]


def test_a_paid_claim_blocks_a_new_one(client: FlaskClient, token: Any) -> None:
    diego = token("diego")
    first = client.post("/claims", json=DIEGO, headers=diego).json
    eventually(lambda: client.get(f"/claims/{first['id']}", headers=diego).json["status"] == "paid")
    second = client.post("/claims", json=DIEGO, headers=diego).json
    assert (second["status"], second["reasons"], second["duplicateOf"]) == ("denied", ["DUPLICATE_CLAIM"], first["id"])


def test_a_denied_claim_does_not_block_a_later_one(client: FlaskClient, token: Any) -> None:
    diego = token("diego")
    denied = client.post("/claims", json={**DIEGO, "separationReason": "quit"}, headers=diego).json
    assert (denied["status"], denied["reasons"], denied["duplicateOf"]) == ("denied", ["INELIGIBLE_SEPARATION"], None)
    later = client.post("/claims", json=DIEGO, headers=diego).json
    assert (later["status"], later["reasons"]) == ("approved", [])


def test_the_http_request_returns_before_the_payment_is_made(
    app: Flask, client: FlaskClient, token: Any, tmp_path: Path
) -> None:
    outage = tmp_path / "bank-down"
    outage.touch()
    app.extensions["hms.ach"].bank.outage_file = outage
    diego = token("diego")
    r = client.post("/claims", json=DIEGO, headers=diego)
    assert r.status_code == 201 and r.json["status"] == "approved"
    assert claim(client, diego, r.json["id"])["status"] == "approved"  # the bank is down, yet the citizen has an answer
    outage.unlink()
    eventually(lambda: claim(client, diego, r.json["id"])["status"] == "paid", timeout=15)


def test_a_retry_with_the_same_idempotency_key_returns_the_first_result(
    app: Flask, client: FlaskClient, token: Any
) -> None:
    diego = token("diego")
    headers = {**diego, "Idempotency-Key": "submit-0001"}
    first = client.post("/claims", json=DIEGO, headers=headers)
    again = client.post("/claims", json=DIEGO, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json["id"] == first.json["id"] and again.json["status"] == "approved"
    assert again.headers["Idempotent-Replayed"] == "true"
    changed = copy.deepcopy(DIEGO)
    changed["weeksWorked"] = 41
    refused = client.post("/claims", json=changed, headers=headers)
    assert refused.status_code == 422 and refused.json["field"] == "Idempotency-Key"
    listing = client.get("/claims", headers=diego).json
    assert listing["total"] == 1


def test_citizens_see_only_their_own_claims(client: FlaskClient, token: Any) -> None:
    mine = client.post("/claims", json=DIEGO, headers=token("diego")).json
    other = token("maria")
    assert client.get(f"/claims/{mine['id']}", headers=other).status_code == 404
    assert client.get("/claims", headers=other).json["total"] == 0
    caseworker = client.get("/claims?pageSize=10", headers=token("cw1", "caseworker")).json
    assert caseworker["total"] == 1 and caseworker["items"][0]["id"] == mine["id"]
    assert client.get(f"/claims/{mine['id']}", headers=token("aud", "auditor")).status_code == 200


@pytest.mark.parametrize(
    ("mutate", "status", "field"),
    [
        (lambda b: b.update(amount=1_000_000), 422, "amount"),
        (lambda b: b.update(status="paid"), 422, "status"),
        (lambda b: b.pop("employer"), 422, "employer"),
        (lambda b: b.update(weeksWorked="forty"), 422, "weeksWorked"),
        (lambda b: b.update(weeksWorked=-1), 422, "weeksWorked"),
        (lambda b: b.update(separationReason="bored"), 422, "separationReason"),
        (lambda b: b["claimant"].update(ssnLast4="12a4"), 422, "claimant.ssnLast4"),
        (lambda b: b["claimant"].update(email="not-an-email"), 422, "claimant.email"),
        (lambda b: b["directDeposit"].update(routingNumber="011000016"), 422, "directDeposit.routingNumber"),
        (lambda b: b["directDeposit"].update(accountType="crypto"), 422, "directDeposit.accountType"),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    client: FlaskClient, token: Any, mutate: Any, status: int, field: str
) -> None:
    body = copy.deepcopy(DIEGO)
    mutate(body)
    r = client.post("/claims", json=body, headers=token("diego"))
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json["field"] == field, r.json
    assert r.json["type"].startswith("https://") and r.json["title"] and "Traceback" not in r.text
    assert client.get("/claims", headers=token("diego")).json["total"] == 0  # nothing was recorded


def test_malformed_json_and_oversized_bodies(client: FlaskClient, token: Any) -> None:
    headers = {**token("diego"), "Content-Type": "application/json"}
    r = client.post("/claims", data="{not json", headers=headers)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/problem+json"
    big = client.post("/claims", data="{" + " " * 70_000 + "}", headers=headers)
    assert big.status_code == 413 and big.json["status"] == 413


@pytest.mark.parametrize(
    ("method", "path", "role", "status"),
    [
        ("get", "/claims", None, 401),
        ("post", "/claims", "caseworker", 403),
        ("get", "/audit/payouts", "citizen", 403),
        ("get", "/audit/payouts", "caseworker", 403),
        ("get", "/mesh/services", "auditor", 403),
        ("get", "/mesh/services", "citizen", 403),
        ("get", "/claims", "auditor", 403),
    ],
)
def test_roles(client: FlaskClient, token: Any, method: str, path: str, role: str | None, status: int) -> None:
    headers = token("someone", role) if role else {}
    r = getattr(client, method)(path, headers=headers, json=DIEGO if method == "post" else None)
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/problem+json"


def test_tokens_are_verified(client: FlaskClient, token: Any, app: Flask) -> None:
    good = token("diego")["Authorization"].split()[1]
    head, payload, sig = good.split(".")
    for bad in ("garbage", f"{head}.{payload}.{sig[:-4]}AAAA", good + "x"):
        r = client.get("/claims", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401 and r.json["field"] == "Authorization"
    expired = token("diego", exp=1)
    assert client.get("/claims", headers=expired).status_code == 401


@BOTH_BUSES
def test_registry_lists_every_service_with_subjects_and_breakers(client: FlaskClient, token: Any) -> None:
    r = client.get("/mesh/services", headers=token("root", "admin"))
    assert r.status_code == 200
    by_name = {s["name"]: s for s in r.json["services"]}
    assert set(by_name) == {"svc", "ach", "metrics", "notifier", "auth"}
    assert by_name["svc"]["publishes"] == ["claim.submitted", "claim.approved", "claim.denied"]
    assert "svc.claims.submit" in by_name["svc"]["serves"]
    assert by_name["ach"]["breakers"] == {"bank": "closed"}
    assert by_name["ach"]["subscribes"] == ["claim.approved", "claim.denied"]
    assert all(s["health"]["status"] == "ok" for s in r.json["services"])


def test_health_jwks_and_openapi(client: FlaskClient) -> None:
    assert client.get("/livez").json["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["checks"]["bus"] == "ok"
    keys = client.get("/.well-known/jwks.json").json["keys"]
    assert keys and all("d" not in k and k["kid"] for k in keys)
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert {"/claims", "/claims/{claim_id}", "/audit/payouts", "/mesh/services", "/readyz"} <= set(spec["paths"])
    assert set(spec["components"]["schemas"]["ClaimIn"]["required"]) >= {"claimant", "directDeposit", "weeksWorked"}


def test_readyz_fails_when_a_database_is_gone(client: FlaskClient, mesh: Mesh) -> None:
    from sqlalchemy import create_engine

    store = mesh.stores["metrics"]
    working, store.engine = store.engine, create_engine("sqlite:////nonexistent/dir/metrics.db")
    try:
        r = client.get("/readyz")
    finally:
        store.engine = working
    assert r.status_code == 503 and r.json["status"] == "unavailable"
    assert r.json["checks"]["metrics"].startswith("failing") and r.json["checks"]["svc"] == "ok"


def test_a_late_duplicate_payment_event_past_inbox_retention_changes_nothing(
    client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    from datetime import timedelta

    diego = token("diego")
    body = client.post("/claims", json=DIEGO, headers=diego).json
    paid = eventually(lambda: (c := claim(client, diego, body["id"]))["status"] == "paid" and c)
    assert mesh.stores["svc"].prune_inbox(timedelta(0)) >= 1  # the svc inbox forgot everything
    mesh.bus.publish(
        "payment.sent",
        {
            "claimId": body["id"],
            "paymentId": paid["paymentId"],
            "citizen": "diego",
            "amount": 600,
            "sentAt": "2026-11-27T10:00:00Z",
        },
        headers=mesh.credentials("ach"),
    ).result(5)
    again = claim(client, diego, body["id"])
    assert again["status"] == "paid" and len(again["timeline"]) == 3
    assert mesh.stores["svc"].list_dead_letters() == []


def test_idempotency_records_expire_after_retention(app: Flask, client: FlaskClient, token: Any) -> None:
    from datetime import timedelta

    headers = {**token("diego"), "Idempotency-Key": "k-1"}
    first = client.post("/claims", json=DIEGO, headers=headers).json
    assert app.extensions["hms.svc"].prune_idempotency(timedelta(days=30)) == 0
    assert client.post("/claims", json=DIEGO, headers=headers).json["id"] == first["id"]
    assert app.extensions["hms.svc"].prune_idempotency(timedelta(0)) == 1
    later = client.post("/claims", json=DIEGO, headers=headers).json
    assert later["id"] != first["id"] and later["reasons"] == ["DUPLICATE_CLAIM"]


def test_concurrent_submits_by_one_citizen_approve_exactly_one(app: Flask, token: Any) -> None:
    import threading

    diego = token("diego")
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(6)

    def submit() -> None:
        client = app.test_client()
        barrier.wait()
        results.append(client.post("/claims", json=DIEGO, headers=diego).json)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r["status"] for r in results) == ["approved"] + ["denied"] * 5
    assert all(r["reasons"] == ["DUPLICATE_CLAIM"] for r in results if r["status"] == "denied")


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        ("directDeposit", "accountNumber", "000123456789\n"),
        ("directDeposit", "routingNumber", "011000015\n"),
        ("claimant", "ssnLast4", "1234\n"),
    ],
)
def test_a_trailing_newline_is_refused_before_anything_is_decided(
    client: FlaskClient, token: Any, where: str, field: str, value: str
) -> None:
    body = {**DIEGO, where: {**DIEGO[where], field: value}}
    r = client.post("/claims", json=body, headers=token("nia"))
    assert r.status_code == 422 and r.json["field"] == f"{where}.{field}", r.json
    assert client.get("/claims", headers=token("nia")).json["total"] == 0  # nothing approved, nothing stranded
    assert client.post("/claims", json=DIEGO, headers=token("nia")).json["status"] == "approved"  # corrected: decided


def test_the_api_spec_keeps_the_digit_patterns(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json["components"]["schemas"]
    assert spec["DirectDepositIn"]["properties"]["accountNumber"]["pattern"] == "^[0-9]{4,17}$"
