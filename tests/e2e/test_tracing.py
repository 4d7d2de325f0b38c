"""One W3C trace follows a claim from the HTTP request through every event to the payment, and into the logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from flask.testing import FlaskClient

from hms.logs import JsonFormatter
from hms.runtime import Mesh
from tests.conftest import DIEGO, eventually

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_callers_trace_follows_the_claim_everywhere(
    client: FlaskClient, token: Any, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hms")
    events: list[tuple[str, str | None, dict[str, Any]]] = []
    publish = mesh.bus.publish

    def recording(subject: str, data: dict[str, Any], **kw: Any) -> Any:
        events.append((subject, kw.get("traceparent"), data))
        return publish(subject, data, **kw)

    mesh.bus.publish = recording  # type: ignore[method-assign]
    r = client.post("/claims", json=DIEGO, headers={**token("diego"), "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    assert r.headers["traceresponse"].startswith(f"00-{TRACE}-")
    claim_id = r.json["id"]
    eventually(lambda: {"claim.submitted", "claim.approved", "payment.sent"} <= {s for s, _, _ in events})
    for subject, traceparent, data in events:
        if data.get("claimId") == claim_id:
            assert traceparent and traceparent.split("-")[1] == TRACE, subject
    eventually(lambda: any("Email sent to citizen diego" in r.getMessage() for r in caplog.records))
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name.startswith("hms")]
    about = [line for line in lines if line.get("claim_id") == claim_id]
    messages = " | ".join(line["message"] for line in about)
    assert "approved" in messages and "sent for claim" in messages and "Email sent" in messages
    assert all(line.get("trace_id") == TRACE for line in about), about
    assert any(line.get("event_id") for line in about)  # consumers' lines name the event they handle


def test_a_request_without_a_traceparent_starts_a_trace(client: FlaskClient, token: Any) -> None:
    r = client.get("/claims", headers=token("diego"))
    version, trace, span, flags = r.headers["traceresponse"].split("-")
    assert (version, flags, len(trace), len(span)) == ("00", "01", 32, 16)
