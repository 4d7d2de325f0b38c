"""HMS-SYS-AUTH: service tokens from one policy; the bus refuses what the policy does not allow, and logs it."""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest
from flask import Flask

from hms.bus import Event, Refused, ReplyError
from hms.bus.guard import AUTH_HEADER
from hms.runtime import Mesh
from tests.conftest import eventually

APPROVED = {
    "claimId": "c-1",
    "citizen": "diego",
    "amount": 600,
    "approvedAt": "2026-11-27T10:00:00Z",
    "ruleVersion": "1",
}


def test_service_tokens_are_short_lived_and_carry_the_policy(mesh: Mesh) -> None:
    token = mesh.credentials("ach")[AUTH_HEADER]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["typ"] == "hms-svc+jwt" and claims["aud"] == "hms-mesh" and claims["sub"] == "ach"
    assert 0 < claims["exp"] - claims["iat"] <= 900
    assert claims["perm"]["publish"] == ["payment.sent", "payment.failed", "payment.returned", "payment.settled"]
    assert claims["perm"]["subscribe"] == ["claim.approved", "claim.denied"]


def test_a_publish_outside_the_policy_is_refused_and_logged(mesh: Mesh, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hms.bus.guard")
    with pytest.raises(Refused, match="ach may not publish claim.approved"):
        mesh.bus.publish("claim.approved", APPROVED, headers=mesh.credentials("ach"))
    assert "ach may not publish claim.approved" in caplog.text
    mesh.bus.publish("claim.approved", APPROVED, headers=mesh.credentials("svc")).result(5)  # svc may


@pytest.mark.parametrize("who", ["nobody", "citizen", "forged"])
def test_a_delivery_without_a_valid_service_token_never_reaches_the_handler(
    app: Flask, mesh: Mesh, who: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hms.bus.guard")
    headers = {
        "nobody": {},
        "citizen": {AUTH_HEADER: app.extensions["hms.auth"].issue("diego", "citizen")},
        "forged": {AUTH_HEADER: mesh.credentials("svc")[AUTH_HEADER][:-6] + "AAAAAA"},
    }[who]
    inner = mesh.bus.inner  # type: ignore[attr-defined]  # the engine itself, as a rogue client would use it
    inner.publish("claim.approved", {**APPROVED, "claimId": f"rogue-{who}"}, headers=headers, event_id=f"rogue-{who}")
    dead = eventually(lambda: mesh.stores["ach"].list_dead_letters())
    assert dead[0]["event_id"] == f"rogue-{who}" and dead[0]["error"].startswith("Refused")
    assert dead[0]["attempts"] == 1  # refused at once, not retried
    from hms.ach.models import Payment

    with mesh.stores["ach"].session() as s:
        assert s.query(Payment).count() == 0
    assert "refused publish on claim.approved" in caplog.text


def test_a_request_without_a_sender_is_refused(mesh: Mesh) -> None:
    with pytest.raises(Refused, match="no service token"):
        mesh.bus.request("svc.claims.ledger", {"limit": 1})


def test_a_request_outside_the_policy_is_refused(mesh: Mesh) -> None:
    with pytest.raises(Refused, match="notifier may not request svc.claims.get"):
        mesh.bus.request("svc.claims.get", {"claimId": "x"}, headers=mesh.credentials("notifier"))
    inner = mesh.bus.inner  # type: ignore[attr-defined]
    with pytest.raises(ReplyError) as err:  # past a lax requester, the responder refuses it too
        inner.request("svc.claims.get", {"claimId": "x"}, headers=mesh.credentials("notifier"))
    assert err.value.status == 403
    assert mesh.bus.request("svc.claims.ledger", {"limit": 1}, headers=mesh.credentials("gateway"))["items"] == []


def test_a_subscription_outside_the_policy_is_refused(mesh: Mesh) -> None:
    with pytest.raises(Refused, match="notifier may not subscribe to claim.approved"):
        mesh.bus.subscribe("claim.approved", lambda e: None, queue="notifier.snoop")
    with pytest.raises(Refused):
        mesh.bus.subscribe("claim.>", lambda e: None)


def test_an_expired_service_token_is_refused(app: Flask, mesh: Mesh) -> None:
    idp = app.extensions["hms.auth"]
    old = idp.issue_service_token("svc", mesh.guard.policy.services["svc"], ttl=1)  # type: ignore[union-attr]
    time.sleep(2.1)
    with pytest.raises(Refused, match="expired"):
        mesh.bus.publish("claim.approved", APPROVED, headers={AUTH_HEADER: old})


def test_tokens_are_renewed_before_they_expire(app: Flask, mesh: Mesh, monkeypatch: Any) -> None:
    guard = mesh.guard
    assert guard is not None
    first = guard.token("svc")
    assert guard.token("svc") == first  # cached
    claims = jwt.decode(first, options={"verify_signature": False})
    monkeypatch.setattr(time, "time", lambda: claims["iat"] + 0.85 * (claims["exp"] - claims["iat"]))
    guard._tokens["svc"] = (first, claims["iat"] + 0.8 * (claims["exp"] - claims["iat"]))
    assert guard.token("svc") != first


def test_handlers_see_the_sender(mesh: Mesh) -> None:
    seen: list[Event] = []
    sub = mesh.bus.subscribe("claim.approved", seen.append, queue="ach.peek")
    mesh.bus.publish("claim.approved", APPROVED, headers=mesh.credentials("svc"))
    eventually(lambda: seen)
    assert mesh.guard.identify(seen[0].headers[AUTH_HEADER]) == "svc"  # type: ignore[union-attr]
    sub.unsubscribe()
