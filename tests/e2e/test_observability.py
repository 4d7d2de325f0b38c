"""Prometheus metrics at /metrics, as a scraper sees them after Diego's claim."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DIEGO, eventually


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain") and r.headers["Content-Type"].count("charset") == 1
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def test_metrics_count_events_handlers_outbox_breakers_and_payout_time(client: FlaskClient, token: Any) -> None:
    claim = client.post("/claims", json=DIEGO, headers=token("diego")).json
    eventually(lambda: client.get(f"/claims/{claim['id']}", headers=token("diego")).json["status"] == "paid")
    handled = ("hms_handler_seconds_count", (("subject", "payment.sent"),))  # svc, metrics and notifier handle it
    m = eventually(
        lambda: (s := scrape(client)).get(("hms_payout_seconds_count", ())) == 1 and s.get(handled, 0) >= 3 and s
    )
    assert m[("hms_events_published_total", (("subject", "claim.approved"),))] == 1
    assert m[("hms_events_published_total", (("subject", "payment.sent"),))] == 1
    assert m[("hms_events_consumed_total", (("group", "ach.on_claim_approved"), ("subject", "claim.approved")))] == 1
    assert ("hms_outbox_backlog", (("service", "svc"),)) in m
    assert m[("hms_breaker_state", (("breaker", "bank"), ("service", "ach"), ("state", "closed")))] == 1
    assert m[("hms_breaker_state", (("breaker", "bank"), ("service", "ach"), ("state", "open")))] == 0
    assert m[("hms_payout_seconds_bucket", (("le", "+Inf"),))] == 1


def test_failed_handlers_are_counted(client: FlaskClient, mesh: Any) -> None:
    store = mesh.stores["ach"]
    with store.session() as s:  # a payment.sent for a claim svc has never seen: svc's handler fails
        s.emit(
            "payment.sent",
            {"claimId": "ghost", "paymentId": "p", "citizen": "x", "amount": 600, "sentAt": "2026-11-27T10:00:00Z"},
        )
    key = ("hms_events_failed_total", (("group", "svc.on_payment_sent"), ("subject", "payment.sent")))
    eventually(lambda: scrape(client).get(key, 0) >= 1)


def test_asyncapi_is_served(client: FlaskClient) -> None:
    doc = client.get("/asyncapi.json").json
    assert doc["asyncapi"] == "3.0.0" and "claim_approved" in doc["channels"]
