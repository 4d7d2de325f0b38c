"""The money path's edges, each written to fail on a mutant that would pay twice or strand a citizen.

Found by mutation testing (docs/mutation.md): each test names the change to the code it catches.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pybreaker
import pytest
from flask import Flask
from flask.testing import FlaskClient

from hms.ach.bank import read_statement
from hms.ach.models import Account, Payment
from hms.ach.payments import Payer
from hms.runtime import Mesh, utcnow
from hms.svc.rules import RuleSet
from tests.conftest import DIEGO, eventually
from tests.integration.test_payments import crash_mid_send, payment_for, payment_for_or_none, stop_worker_and_submit


def held_payment(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> tuple[Payer, str, str]:
    """The payments service with its worker stopped, and Diego's approved claim and its pending payment."""
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    return app.extensions["hms.ach"].payer, claim_id, payment_for(mesh, claim_id).id


def transfers(app: Flask) -> list[str]:
    return [t["claimId"] for t in read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))]


def seconds_until_next_attempt(mesh: Mesh, claim_id: str) -> float:
    return (payment_for(mesh, claim_id).next_attempt_at - utcnow()).total_seconds()


# -- one transfer per payment -------------------------------------------------------------------
def test_paying_a_payment_twice_calls_the_bank_once(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    """Catches: the `state == "pending"` condition dropped from pay()'s compare-and-set."""
    payments, claim_id, pid = held_payment(app, client, token, mesh)
    assert payments.pay(pid) == "sent"
    assert payments.pay(pid) == "taken"
    assert payment_for(mesh, claim_id).state == "sent"
    assert transfers(app) == [claim_id]


def test_two_workers_on_one_payment_make_one_transfer(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    payments: Payer = app.extensions["hms.ach"].payer
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    pid = payment_for(mesh, claim_id).id
    other = Payer(payments.units, payments.bank, payments.breaker)  # a second process's worker
    payments.bank.latency_ms = 200  # both are at the bank at once if both got past the compare-and-set
    start = threading.Barrier(2)

    def pay(worker: Payer) -> str:
        start.wait()
        return worker.pay(pid)

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(pay, (payments, other)))
    assert outcomes == ["sent", "taken"]
    assert transfers(app) == [claim_id]


# -- recovery of a send cut short ---------------------------------------------------------------
@pytest.mark.parametrize(
    "meanwhile",
    [
        pytest.param({"state": "sent"}, id="recorded-sent"),  # the first worker finished after all
        pytest.param({"claimed_by": "another-worker"}, id="claimed-by-another-worker"),
        pytest.param({"claimed_at": "now"}, id="claimed-again-by-the-same-worker"),
    ],
)
def test_a_recovery_resets_only_the_send_it_saw(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh, meanwhile: dict[str, str]
) -> None:
    """Between recovery's look and its reset, the payment changed in one way: the reset must not happen.

    Catches, one each: `state == "sending"`, `claimed_by == …` or `claimed_at == …` dropped from the reset."""
    payments, claim_id, pid = held_payment(app, client, token, mesh)
    crash_mid_send(mesh, claim_id)
    lookup = payments.bank.lookup
    changes = {k: utcnow() if v == "now" else v for k, v in meanwhile.items()}

    def and_meanwhile(key: str) -> str | None:
        found = lookup(key)
        with mesh.stores["ach"].session() as s:
            p = s.get(Payment, pid)
            for name, value in changes.items():
                setattr(p, name, value)
        return found

    payments.bank.lookup = and_meanwhile
    try:
        payments._recover(pid)
    finally:
        payments.bank.lookup = lookup
    p = payment_for(mesh, claim_id)
    assert p.state == changes.get("state", "sending")
    assert (p.claimed_by, p.claimed_at) != (None, None)
    assert p.claimed_by == changes.get("claimed_by", "dead-worker")


def test_a_stale_send_the_bank_never_saw_is_put_back_and_paid_once(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    payments, claim_id, pid = held_payment(app, client, token, mesh)
    crash_mid_send(mesh, claim_id)
    with mesh.stores["ach"].session() as s:  # whatever it said before, a put-back send is due at once
        s.get(Payment, pid).next_attempt_at = utcnow() + timedelta(hours=1)
    payments._recover(pid)
    p = payment_for(mesh, claim_id)
    assert (p.state, p.claimed_by) == ("pending", None) and abs(seconds_until_next_attempt(mesh, claim_id)) < 2
    payments.run_once()
    assert payment_for(mesh, claim_id).state == "sent" and transfers(app) == [claim_id]


def test_a_send_inside_its_lease_is_not_recovered(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    payments, claim_id, pid = held_payment(app, client, token, mesh)
    with mesh.stores["ach"].session() as s:
        p = s.get(Payment, pid)
        p.state, p.claimed_at, p.claimed_by = "sending", utcnow() - timedelta(seconds=payments.lease - 5), "busy"
    payments.run_once()
    assert (payment_for(mesh, claim_id).state, payment_for(mesh, claim_id).claimed_by) == ("sending", "busy")
    assert transfers(app) == []


# -- the retry schedule -------------------------------------------------------------------------
def test_the_backoff_doubles_from_the_base_up_to_the_cap(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh, tmp_path: Path
) -> None:
    payments = app.extensions["hms.ach"].payer
    payments.retry_base, payments.retry_max = 1.0, 10.0
    payments.breaker = pybreaker.CircuitBreaker(fail_max=1000, exclude=payments.breaker.excluded_exceptions)
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    pid = payment_for(mesh, claim_id).id
    (tmp_path / "down").touch()
    payments.bank.outage_file = tmp_path / "down"
    for attempt, expected in enumerate([1, 2, 4, 8, 10, 10], start=1):
        assert payments.pay(pid) == "retry"
        p = payment_for(mesh, claim_id)
        assert (p.state, p.attempts, p.claimed_by) == ("pending", attempt, None)
        assert p.last_error == "sandbox bank is down (outage file present)"
        wait = seconds_until_next_attempt(mesh, claim_id)
        assert 0.8 * expected - 0.5 <= wait <= 1.2 * expected, (attempt, wait)  # ±20 % jitter, never in the past
    assert transfers(app) == []


def test_a_payment_sent_after_a_failed_attempt_no_longer_shows_its_error(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh, tmp_path: Path
) -> None:
    """Catches: recording a payment sent without clearing the error of the attempt before."""
    payments = app.extensions["hms.ach"].payer
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    pid = payment_for(mesh, claim_id).id
    (tmp_path / "down").touch()
    payments.bank.outage_file = tmp_path / "down"
    assert payments.pay(pid) == "retry"
    assert payment_for(mesh, claim_id).last_error == "sandbox bank is down (outage file present)"
    (tmp_path / "down").unlink()
    assert payments.pay(pid) == "sent"
    p = payment_for(mesh, claim_id)
    assert (p.state, p.attempts, p.last_error) == ("sent", 2, None)
    assert [t["claimId"] for t in read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))] == [claim_id]


def test_an_open_breaker_waits_half_its_reset_without_counting_an_attempt(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    payments = app.extensions["hms.ach"].payer
    payments.breaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=1000)
    payments.breaker.open()
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    assert payments.pay(payment_for(mesh, claim_id).id) == "waiting"
    p = payment_for(mesh, claim_id)
    assert (p.state, p.attempts) == ("pending", 0)
    assert p.last_error.startswith("circuit breaker open")
    assert 0.8 * 500 - 0.5 <= seconds_until_next_attempt(mesh, claim_id) <= 1.2 * 500  # half the reset, jittered


# -- where a payment goes ----------------------------------------------------------------------
def ask_gateway(mesh: Mesh, subject: str, data: dict[str, Any], version: int = 1) -> Any:
    return mesh.bus.request(subject, data, 5, headers=mesh.credentials("gateway"), version=version)


def submit_v1(mesh: Mesh, citizen: str) -> str:
    """A claim as a gateway from before claims carried their account submits it (contract v1: no claim id)."""
    body = {k: v for k, v in DIEGO.items() if k != "directDeposit"}
    claim = ask_gateway(mesh, "svc.claims.submit", {**body, "citizen": citizen})
    assert claim["status"] == "approved"
    return str(claim["id"])


def statement_accounts(app: Flask) -> dict[str, str]:
    return {t["claimId"]: t["account"] for t in read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))}


def test_a_payment_goes_to_the_account_given_with_its_claim(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    """Catches: the payment recorded against the citizen's newest account instead of its claim's."""
    payments = app.extensions["hms.ach"].payer
    mesh.workers["ach.payments"].stop()
    first = client.post("/claims", json=DIEGO, headers=token("kai")).json
    assert first["account"] == "****6789"
    other = {**DIEGO["directDeposit"], "accountNumber": "111122223333"}
    second = client.post("/claims", json={**DIEGO, "directDeposit": other}, headers=token("kai")).json
    assert (second["status"], second["reasons"], "account" in second) == ("denied", ["DUPLICATE_CLAIM"], False)
    pid = eventually(lambda: payment_for_or_none(mesh, first["id"])).id
    assert payments.pay(pid) == "sent"
    assert statement_accounts(app) == {first["id"]: "****6789"}


def test_an_approval_from_a_v1_gateway_goes_to_the_citizens_latest_account_once_there(app: Flask, mesh: Mesh) -> None:
    """Claims submitted before claims carried their account: ach waits (redelivery) for the account, then pays
    into the latest one the citizen registered without a claim. Catches: the claim-less filter dropped."""
    ask_gateway(mesh, "ach.accounts.register", {"citizen": "noor", "claimId": "another", **DIEGO["directDeposit"]}, 2)
    claim_id = submit_v1(mesh, "noor")
    assert payment_for_or_none(mesh, claim_id) is None  # no claim-less account yet: redelivered, not recorded
    register(mesh, "noor", accountNumber="555566667777")
    eventually(lambda: (p := payment_for_or_none(mesh, claim_id)) is not None and p.state == "sent")
    assert statement_accounts(app)[claim_id] == "****7777"


def test_a_v1_approval_pays_into_the_citizens_newest_account_registered_without_a_claim(app: Flask, mesh: Mesh) -> None:
    """Catches: the citizen or the claim-less filter dropped from the fallback, or its newest-first order."""
    register(mesh, "noor", accountNumber="111111111111")
    register(mesh, "noor", accountNumber="777777777777")  # the newest without a claim: this one
    register(mesh, "noor", "another-claim", accountNumber="222222222222")  # newer, but another claim's
    register(mesh, "kai", accountNumber="333333333333")  # newer, but another citizen's
    claim_id = submit_v1(mesh, "noor")
    eventually(lambda: (p := payment_for_or_none(mesh, claim_id)) is not None and p.state == "sent")
    assert statement_accounts(app)[claim_id] == "****7777"


def test_an_approval_with_no_account_ends_as_a_dead_letter_and_pays_nothing(app: Flask, mesh: Mesh) -> None:
    claim_id = submit_v1(mesh, "omar")
    dead = eventually(lambda: ask_gateway(mesh, "ach.deadletters.list", {})["items"])
    assert [d["subject"] for d in dead] == ["claim.approved"]
    assert f"no account registered for claim {claim_id}" in dead[0]["error"]
    assert payment_for_or_none(mesh, claim_id) is None and transfers(app) == []


def orphan_payment(app: Flask, client: FlaskClient, token: Any, mesh: Mesh, citizen: str) -> str:
    """An approved claim whose payment names no account, as a payment recorded before the account move can."""
    mesh.workers["ach.payments"].stop()
    claim_id = client.post("/claims", json=DIEGO, headers=token(citizen)).json["id"]
    pid = eventually(lambda: payment_for_or_none(mesh, claim_id)).id
    with mesh.stores["ach"].session() as s:
        s.get(Payment, pid).account_id = None
    return str(claim_id)


def test_a_payment_with_no_account_fails_as_no_account(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    claim_id = orphan_payment(app, client, token, mesh, "omar")
    payments = app.extensions["hms.ach"].payer
    assert payments.pay(payment_for(mesh, claim_id).id) == "failed"
    assert (payment_for(mesh, claim_id).state, payment_for(mesh, claim_id).last_error) == ("failed", "NO_ACCOUNT")
    claim = eventually(
        lambda: (c := client.get(f"/claims/{claim_id}", headers=token("omar")).json)["status"] == "payment_failed" and c
    )
    assert claim["failureReason"] == "NO_ACCOUNT" and transfers(app) == []


# -- the decision -------------------------------------------------------------------------------
def test_racing_first_uses_of_an_idempotency_key_all_get_the_same_claim(app: Flask, token: Any) -> None:
    headers = {**token("diego"), "Idempotency-Key": "race-1"}

    def submit(_: int) -> tuple[int, str]:
        r = app.test_client().post("/claims", json=DIEGO, headers=headers)
        return r.status_code, r.json["id"]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(submit, range(6)))
    assert {status for status, _ in results} == {201}
    assert len({claim_id for _, claim_id in results}) == 1
    listed = app.test_client().get("/claims", headers=token("diego")).json
    assert listed["total"] == 1


def test_every_denial_reason_is_explained_with_its_own_sentence(client: FlaskClient, token: Any) -> None:
    rules = {r.code: r.explain for r in RuleSet.load().rules}
    approved = client.post("/claims", json=DIEGO, headers=token("ivy")).json
    assert approved["status"] == "approved"
    worst = {**DIEGO, "separationReason": "quit", "weeksWorked": 3, "baseWages": 100}
    denied = client.post("/claims", json=worst, headers=token("ivy")).json
    assert [r["code"] for r in denied["reasonDetails"]] == [
        "INELIGIBLE_SEPARATION",
        "INSUFFICIENT_WEEKS",
        "INSUFFICIENT_WAGES",
        "DUPLICATE_CLAIM",
    ]
    for reason in denied["reasonDetails"]:
        assert reason["message"] == rules[reason["code"]]
    assert "You worked fewer than 20 weeks in the base period." in [r["message"] for r in denied["reasonDetails"]]


# -- ledgers, to their last page ----------------------------------------------------------------
def test_ledgers_page_to_the_end_and_only_the_last_page_lists_unmatched_transfers(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    ids = sorted(str(client.post("/claims", json=DIEGO, headers=token(f"p{i}")).json["id"]) for i in range(3))
    eventually(lambda: len(transfers(app)) == 3)
    gateway = mesh.credentials("gateway")

    def page(subject: str, after: str | None, limit: int) -> Any:
        return mesh.bus.request(subject, {"after": after, "limit": limit}, 5, headers=gateway)

    for subject in ("svc.claims.ledger", "ach.payments.ledger"):
        first = page(subject, None, 2)
        assert [i["claimId"] for i in first["items"]] == ids[:2] and first["next"] == ids[1]
        assert "unmatchedTransfers" not in first
        last = page(subject, first["next"], 2)
        assert [i["claimId"] for i in last["items"]] == ids[2:] and last["next"] is None
    full = page("ach.payments.ledger", None, 3)  # exactly full: the last page is the next, empty one
    assert len(full["items"]) == 3 and full["next"] == ids[2]
    end = page("ach.payments.ledger", full["next"], 3)
    assert end == {"items": [], "next": None, "unmatchedTransfers": []}
    assert [i["bankTransfers"] for i in full["items"]] == [1, 1, 1]


def test_staff_see_a_claims_payment_with_the_account_masked(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    claim_id = stop_worker_and_submit(app, client, token, mesh)
    gateway = mesh.credentials("gateway")
    pending = mesh.bus.request("ach.payments.get", {"claimId": claim_id}, 5, headers=gateway)
    assert pending == {
        "claimId": claim_id,
        "paymentId": payment_for(mesh, claim_id).id,
        "state": "pending",
        "amount": 600.0,
        "attempts": 0,
        "lastError": None,
        "bankReference": None,
        "sentAt": None,
        "account": "****6789",
        "accountType": "checking",
        "returnCode": None,
        "notices": [],
    }
    app.extensions["hms.ach"].payer.run_once()
    sent = mesh.bus.request("ach.payments.get", {"claimId": claim_id}, 5, headers=gateway)
    assert (sent["state"], sent["attempts"]) == ("sent", 1)
    assert sent["bankReference"].startswith("SBX-") and sent["sentAt"].endswith("Z")
    from hms.bus import ReplyError

    with pytest.raises(ReplyError) as missing:
        mesh.bus.request("ach.payments.get", {"claimId": "no-such-claim"}, 5, headers=gateway)
    assert (missing.value.status, missing.value.field) == (404, "claimId")


# -- the claim service's answers, exactly ---------------------------------------------------------
def ask_svc(mesh: Mesh, subject: str, data: dict[str, Any]) -> Any:
    return mesh.bus.request(subject, data, 5, headers=mesh.credentials("gateway"))


def submit(mesh: Mesh, citizen: str, **changes: Any) -> dict[str, Any]:
    body = {k: v for k, v in DIEGO.items() if k != "directDeposit"}
    return ask_svc(mesh, "svc.claims.submit", {**body, "citizen": citizen, **changes})  # type: ignore[no-any-return]


def submit_v2(mesh: Mesh, citizen: str, claim_id: str) -> dict[str, Any]:
    """Submit as the gateway does (contract v2: the claim's id chosen by the caller), straight to svc."""
    body = {k: v for k, v in DIEGO.items() if k != "directDeposit"}
    return ask_gateway(mesh, "svc.claims.submit", {**body, "citizen": citizen, "claimId": claim_id}, 2)  # type: ignore[no-any-return]


def details_of(mesh: Mesh, citizen: str | None = None) -> set[str | None]:
    """The claim ids ach holds bank details under: the citizen's, or everyone's (None: details without a claim)."""
    with mesh.stores["ach"].session() as s:
        accounts = s.query(Account)
        return {a.claim_id for a in (accounts.filter(Account.citizen == citizen) if citizen else accounts)}


class Pause:
    """A one-shot slowdown for a patched step: the first call after `arm()` sleeps `seconds`, later calls do not."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.armed = seconds, threading.Event()

    def arm(self) -> None:
        self.armed.set()

    def __call__(self) -> None:
        if self.armed.is_set():
            self.armed.clear()
            time.sleep(self.seconds)


def test_a_claim_id_is_filed_once(mesh: Mesh) -> None:
    """v2 submits name the claim's id (ach holds its account under it): a second claim under that id is refused,
    and the first keeps its decision. Catches: the existence check dropped (the insert would fail untidily)."""
    from hms.bus import ReplyError

    first = submit_v2(mesh, "kai", "claim-1")
    assert (first["id"], first["status"]) == ("claim-1", "approved")
    with pytest.raises(ReplyError) as again:
        submit_v2(mesh, "lea", "claim-1")
    e = again.value
    assert (e.status, e.title, e.detail, e.field) == (
        409,
        "Claim exists",
        "a claim with this id was filed already",
        "claimId",
    )
    assert ask_svc(mesh, "svc.claims.get", {"claimId": "claim-1"})["citizen"] == "kai"


def test_a_claim_id_longer_than_svc_holds_is_refused_by_name(mesh: Mesh) -> None:
    """The submit's contract admits ids of 64 characters; svc's claims hold 36 (a uuid). Catches: a longer id
    filed on SQLite, or a 500 on PostgreSQL (the database refuses it inside the transaction)."""
    from hms.bus import ReplyError

    with pytest.raises(ReplyError) as refused:
        submit_v2(mesh, "kai", "x" * 37)
    e = refused.value
    assert (e.status, e.title, e.detail, e.field) == (
        422,
        "Invalid request",
        "claimId is longer than 36 characters",
        "claimId",
    )
    assert ask_svc(mesh, "svc.claims.list", {"citizen": "kai", "page": 1, "pageSize": 10})["items"] == []
    filed = submit_v2(mesh, "kai", "y" * 36)
    assert (filed["id"], filed["status"]) == ("y" * 36, "approved")


@pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)
def test_a_withdrawn_submission_is_never_filed_and_a_filed_claim_is_not_withdrawn(mesh: Mesh) -> None:
    """`svc.claims.withdraw` (the gateway, once it stopped waiting for a submit): an id no claim has is withdrawn
    for good — asked again, the same answer; a submit under it later is refused and files nothing — and an id a
    claim has is answered as filed and left alone. Catches: the withdrawal not recorded, the submit's check
    dropped, a filed claim taken for unfiled."""
    from hms.bus import ReplyError

    withdraw = "svc.claims.withdraw"
    assert ask_gateway(mesh, withdraw, {"citizen": "kai", "claimId": "late-1"}) == {"filed": False}
    assert ask_gateway(mesh, withdraw, {"citizen": "kai", "claimId": "late-1"}) == {"filed": False}
    with pytest.raises(ReplyError) as late:
        submit_v2(mesh, "kai", "late-1")
    assert (late.value.status, late.value.title, late.value.detail, late.value.field) == (
        409,
        "Submission withdrawn",
        "this submission was withdrawn; submit the claim again",
        "claimId",
    )
    with pytest.raises(ReplyError) as missing:
        ask_svc(mesh, "svc.claims.get", {"claimId": "late-1"})
    assert missing.value.status == 404
    filed = submit_v2(mesh, "kai", "on-time")
    assert ask_gateway(mesh, withdraw, {"citizen": "kai", "claimId": "on-time"}) == {"filed": True}
    assert ask_svc(mesh, "svc.claims.get", {"claimId": "on-time"})["status"] == filed["status"] == "approved"


def test_withdrawals_are_pruned_with_the_idempotency_keys(app: Flask, mesh: Mesh) -> None:
    """Catches: withdrawals kept forever, or pruned while young."""
    from hms.svc.models import Withdrawal

    for claim_id in ("old", "new"):
        ask_gateway(mesh, "svc.claims.withdraw", {"citizen": "kai", "claimId": claim_id})
    with mesh.stores["svc"].session() as s:
        s.get(Withdrawal, "old").withdrawn_at = utcnow() - timedelta(days=2)
    app.extensions["hms.svc"].prune_idempotency(timedelta(days=1))
    with mesh.stores["svc"].session() as s:
        assert [w.claim_id for w in s.query(Withdrawal)] == ["new"]


def test_forgotten_claim_ids_are_pruned_after_the_retention(app: Flask, mesh: Mesh) -> None:
    """Catches: forgotten ids kept forever, pruned while young, or the chore's retention not the configured one."""
    from hms.ach.models import Forgotten

    ach = app.extensions["hms.ach"]
    assert ach.keep_forgotten == timedelta(days=app.config["HMS_IDEMPOTENCY_RETENTION_DAYS"])
    assert ach.prune in mesh.stores["ach"].relay.chores  # run about once an hour
    for claim_id in ("old", "new"):
        ask_gateway(mesh, "ach.accounts.forget", {"citizen": "kai", "claimId": claim_id})
    with mesh.stores["ach"].session() as s:
        s.get_one(Forgotten, "old").forgotten_at = utcnow() - ach.keep_forgotten - timedelta(hours=1)
    ach.prune()
    with mesh.stores["ach"].session() as s:
        assert [f.claim_id for f in s.query(Forgotten)] == ["new"]


@pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)
@pytest.mark.parametrize("late", ["deciding", "not started"])
def test_a_submit_svc_answers_too_late_is_answered_as_filed_or_withdrawn_with_its_details_deleted(
    client: FlaskClient, token: Any, mesh: Mesh, monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    """svc takes longer than the gateway waits for a submit. Still deciding (the rules slow, inside the citizen's
    lock): the gateway's withdrawal waits for the decision, finds the claim filed and the citizen gets it (201),
    paid once. Not started (slow before its transaction): the withdrawal comes first, the submit arriving after it is
    refused, nothing is filed, the details are deleted and the citizen is told so (504); a retry is decided and
    paid as usual. Catches: details left in ach on a timeout, a claim filed after its withdrawal, a 504 for a
    claim that was filed, the rate-limit count kept for a withdrawn submission."""

    client.application.config["HMS_REQUEST_TIMEOUT_S"] = 1.0
    monkeypatch.setattr(client.application.extensions["hms.ratelimit"], "limit", 1)  # a count kept refuses the retry
    pause = Pause(1.3)  # the next submit, once armed
    if late == "deciding":
        evaluate = RuleSet.evaluate
        monkeypatch.setattr(RuleSet, "evaluate", lambda rules, application: (pause(), evaluate(rules, application))[1])
    else:
        store = mesh.stores["svc"]  # its requests' units (consumers took their sessions' maker at the start)
        begin = store.session
        monkeypatch.setattr(store, "session", lambda: (pause(), begin())[1])
    pause.arm()
    first = client.post("/claims", json=DIEGO, headers=token("kai"))
    time.sleep(0.6)  # the slow submit is over
    if late == "deciding":
        assert first.status_code == 201, first.json
        assert (first.json["status"], first.json["account"]) == ("approved", "****6789")
        assert details_of(mesh, "kai") == {first.json["id"]}
        eventually(lambda: payment_for_or_none(mesh, first.json["id"]) is not None)
        return
    assert first.status_code == 504 and "nothing was filed" in first.json["detail"]
    assert details_of(mesh, "kai") == set()
    assert client.get("/claims", headers=token("kai")).json["items"] == []
    again = client.post("/claims", json=DIEGO, headers=token("kai"))
    assert (again.status_code, again.json["status"]) == (201, "approved")
    assert details_of(mesh, "kai") == {again.json["id"]}
    eventually(lambda: payment_for_or_none(mesh, again.json["id"]) is not None)


def test_a_late_claim_svc_filed_but_cannot_show_is_a_504_that_keeps_its_details(
    client: FlaskClient, token: Any, mesh: Mesh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """svc answers a submit too late, says on the withdrawal that it filed the claim, then cannot show it: the
    citizen gets the submit's 504 (the claim is in their list), the details stay (the filed claim is paid into
    them) and nothing is logged as left behind. Catches: the details of a filed claim deleted, a misleading
    warning that tells an operator to erase them."""
    import logging

    from hms.bus import BusTimeout
    from hms.gateway import api

    client.application.config["HMS_REQUEST_TIMEOUT_S"] = 1.0
    evaluate, ask, pause = RuleSet.evaluate, api.ask, Pause(1.3)

    def deciding(rules: RuleSet, application: Any) -> Any:
        pause()
        return evaluate(rules, application)

    def no_get(subject: str, data: dict[str, Any], version: int = 1) -> Any:
        if subject == "svc.claims.get":
            raise BusTimeout(subject, 1.0)
        return ask(subject, data, version)

    monkeypatch.setattr(RuleSet, "evaluate", deciding)
    monkeypatch.setattr(api, "ask", no_get)
    caplog.set_level(logging.WARNING, logger="hms.gateway")
    pause.arm()
    late = client.post("/claims", json=DIEGO, headers=token("kai"))
    assert late.status_code == 504 and "svc.claims.submit" in late.json["detail"], late.json
    assert [r.getMessage() for r in caplog.records if "ach" in r.getMessage()] == []
    monkeypatch.setattr(api, "ask", ask)
    (claim,) = client.get("/claims", headers=token("kai")).json["items"]
    assert claim["status"] == "approved"
    assert details_of(mesh, "kai") == {claim["id"]}
    eventually(lambda: payment_for_or_none(mesh, claim["id"]) is not None)


@pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)
@pytest.mark.parametrize("late", ["registering", "not started"])
def test_a_registration_ach_answers_too_late_decides_nothing_and_leaves_no_details(
    client: FlaskClient,
    token: Any,
    mesh: Mesh,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    late: str,
) -> None:
    """ach takes longer than the gateway waits for the registration: svc is not asked, the gateway has ach forget
    the details and tells the citizen nothing was filed (504). Still registering (slow inside its transaction,
    the row written): the deletion waits for it and deletes the row. Not started (slow before its transaction): the
    deletion comes first and the registration arriving after it is refused. Either way no details are left and a
    retry is decided and paid as usual. Catches: a decision without a registered account, details stored after
    their deletion, the rate-limit count kept for a submission that filed nothing."""
    import importlib
    import logging

    ach = importlib.import_module("hms.ach.service")  # the module (the package's `service` is the Service)

    # The registration outlasts the gateway's wait by 0.3 s; the forget that waits for it still has 0.7 s to answer
    # (with 0.5 s and 0.8 s it had 0.2 s, and on a busy CI machine over NATS once took longer).
    client.application.config["HMS_REQUEST_TIMEOUT_S"] = 1.0
    monkeypatch.setattr(client.application.extensions["hms.ratelimit"], "limit", 1)  # a count kept refuses the retry
    pause = Pause(1.3)  # the next registration, once armed
    if late == "registering":
        monkeypatch.setattr(ach, "Account", lambda **row: (pause(), Account(**row))[1])
    else:
        store = mesh.stores[
            "ach"
        ]  # its requests' units (consumers and the payer took their sessions' maker at the start)
        begin = store.session
        monkeypatch.setattr(store, "session", lambda: (pause(), begin())[1])
    caplog.set_level(logging.WARNING, logger="hms.gateway")
    pause.arm()
    first = client.post("/claims", json=DIEGO, headers=token("kai"))
    assert first.status_code == 504 and "nothing was filed" in first.json["detail"], first.json
    time.sleep(0.6)  # the slow registration is over
    assert details_of(mesh, "kai") == set()
    assert [r.getMessage() for r in caplog.records if "ach" in r.getMessage()] == []
    assert client.get("/claims", headers=token("kai")).json["items"] == []
    again = client.post("/claims", json=DIEGO, headers=token("kai"))
    assert (again.status_code, again.json["status"]) == (201, "approved"), again.json
    assert details_of(mesh, "kai") == {again.json["id"]}
    eventually(lambda: payment_for_or_none(mesh, again.json["id"]) is not None)


def test_an_idempotency_key_replays_the_first_result_and_refuses_another_body(mesh: Mesh) -> None:
    from hms.bus import ReplyError

    first = submit(mesh, "kai", idempotencyKey="k1")  # no fingerprint: a caller that sends none
    again = submit(mesh, "kai", idempotencyKey="k1")
    assert again == {**first, "replayed": True} and "replayed" not in first
    other = submit(mesh, "lea", idempotencyKey="k1")  # keys are per citizen
    assert other["id"] != first["id"] and "replayed" not in other
    with pytest.raises(ReplyError) as refused:
        submit(mesh, "kai", idempotencyKey="k1", fingerprint="another-body")
    e = refused.value
    assert (e.status, e.title, e.field) == (422, "Idempotency-Key reused", "Idempotency-Key")
    assert e.detail == "this Idempotency-Key was used with a different request body"


def test_a_claim_is_found_by_its_owner_and_staff_only(mesh: Mesh) -> None:
    from hms.bus import ReplyError

    claim = submit(mesh, "kai")
    assert ask_svc(mesh, "svc.claims.get", {"claimId": claim["id"], "citizen": "kai"})["id"] == claim["id"]
    assert ask_svc(mesh, "svc.claims.get", {"claimId": claim["id"]})["citizen"] == "kai"  # staff: no citizen
    for request in ({"claimId": claim["id"], "citizen": "someone-else"}, {"claimId": "no-such-claim"}):
        with pytest.raises(ReplyError) as missing:
            ask_svc(mesh, "svc.claims.get", request)
        e = missing.value
        assert (e.status, e.title, e.detail, e.field) == (404, "Not found", "no such claim", "id")


def test_claims_list_newest_first_scoped_filtered_and_paged(mesh: Mesh) -> None:
    kai = [submit(mesh, "kai"), submit(mesh, "kai", separationReason="quit")]  # approved, then duplicate+quit
    lea = submit(mesh, "lea", weeksWorked=3)
    everyone = ask_svc(mesh, "svc.claims.list", {"page": 1, "pageSize": 10})
    assert [c["id"] for c in everyone["items"]] == [lea["id"], kai[1]["id"], kai[0]["id"]]
    assert (everyone["page"], everyone["pageSize"], everyone["total"]) == (1, 10, 3)
    assert "timeline" not in everyone["items"][0] and everyone["items"][0]["claimant"]["name"] == "Diego Ramos"
    own = ask_svc(mesh, "svc.claims.list", {"citizen": "kai", "page": 1, "pageSize": 10})
    assert [c["id"] for c in own["items"]] == [kai[1]["id"], kai[0]["id"]] and own["total"] == 2
    denied = ask_svc(mesh, "svc.claims.list", {"status": "denied", "page": 1, "pageSize": 10})
    assert [c["id"] for c in denied["items"]] == [lea["id"], kai[1]["id"]] and denied["total"] == 2
    both = ask_svc(mesh, "svc.claims.list", {"citizen": "kai", "status": "denied", "page": 1, "pageSize": 10})
    assert [c["id"] for c in both["items"]] == [kai[1]["id"]]
    second = ask_svc(mesh, "svc.claims.list", {"page": 2, "pageSize": 2})
    assert [c["id"] for c in second["items"]] == [kai[0]["id"]] and second["total"] == 3 and second["page"] == 2


def test_payment_outcomes_land_on_the_claim_once(app: Flask, mesh: Mesh, client: FlaskClient, token: Any) -> None:
    paid = client.post("/claims", json=DIEGO, headers=token("kai")).json
    body = {**DIEGO, "directDeposit": {**DIEGO["directDeposit"], "accountNumber": "999900001234"}}
    failed = client.post("/claims", json=body, headers=token("lea")).json
    done = eventually(
        lambda: (
            (p := ask_svc(mesh, "svc.claims.get", {"claimId": paid["id"]}))["status"] == "paid"
            and (f := ask_svc(mesh, "svc.claims.get", {"claimId": failed["id"]}))["status"] == "payment_failed"
            and (p, f)
        )
    )
    p, f = done
    payment_id = payment_for(mesh, paid["id"]).id
    assert p["paymentId"] == payment_id and p["failureReason"] is None
    assert p["timeline"][-1] == {"status": "paid", "at": p["timeline"][-1]["at"], "detail": payment_id}
    assert [t["status"] for t in p["timeline"]] == ["submitted", "approved", "paid"]
    assert f["failureReason"] == "ACCOUNT_CLOSED" and f["paymentId"] is None
    assert f["timeline"][-1]["status"] == "payment_failed" and f["timeline"][-1]["detail"] == "ACCOUNT_CLOSED"
    # The same outcome again (a redelivery under a new event id) changes nothing.
    again = {"claimId": paid["id"], "paymentId": payment_id, "citizen": "kai", "amount": 600, "sentAt": p["decidedAt"]}
    mesh.bus.publish("payment.sent", again, headers=mesh.credentials("ach")).result(5)
    eventually(lambda: mesh.stores["svc"].outbox_backlog() == 0)
    assert ask_svc(mesh, "svc.claims.get", {"claimId": paid["id"]})["timeline"] == p["timeline"]
    assert mesh.stores["svc"].list_dead_letters() == []


def test_a_payment_outcome_for_a_claim_that_was_not_approved_is_a_dead_letter(mesh: Mesh) -> None:
    denied = submit(mesh, "kai", separationReason="quit")
    sent = {"claimId": denied["id"], "paymentId": "p-x", "citizen": "kai", "amount": 600, "sentAt": denied["decidedAt"]}
    mesh.bus.publish("payment.sent", sent, headers=mesh.credentials("ach")).result(5)
    unknown = {**sent, "claimId": "no-such-claim"}
    mesh.bus.publish(
        "payment.failed",
        {k: unknown[k] for k in ("claimId", "citizen")} | {"reason": "X", "attempts": 1},
        headers=mesh.credentials("ach"),
    ).result(5)
    dead = eventually(lambda: len(d := mesh.stores["svc"].list_dead_letters()) == 2 and d, timeout=20)
    errors = sorted(d["error"] for d in dead)
    assert f"payment.sent: claim {denied['id']} is denied, not approved or returned" in errors[1]
    assert "payment.failed: unknown claim no-such-claim" in errors[0]
    assert ask_svc(mesh, "svc.claims.get", {"claimId": denied["id"]})["status"] == "denied"


# -- the payments service's records, exactly --------------------------------------------------------
def test_a_send_is_claimed_by_this_worker_while_at_the_bank_and_recorded_as_the_bank_said(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    payments, claim_id, pid = held_payment(app, client, token, mesh)
    transfer, seen = payments.bank.transfer, []

    def watching(t: Any) -> str:
        seen.append((payment_for(mesh, claim_id), t))
        return transfer(t)

    payments.bank.transfer = watching
    try:
        assert payments.pay(pid) == "sent"
    finally:
        payments.bank.transfer = transfer
    [(during, t)] = seen
    assert (during.state, during.claimed_by, during.attempts) == ("sending", payments.instance, 1)
    assert during.claimed_by and during.claimed_by != other_worker_instance(payments)
    assert abs((utcnow() - during.claimed_at).total_seconds()) < 5
    assert (t.idempotency_key, t.claim_id, t.amount) == (f"hms-claim-{claim_id}", claim_id, 600)
    assert (t.routing_number, t.account_number, t.originator) == ("011000015", "000123456789", payments.originator())
    [line] = read_statement(Path(app.config["HMS_ACH_SANDBOX_STATEMENT"]))
    p = payment_for(mesh, claim_id)
    assert (p.state, p.bank_reference, p.last_error) == ("sent", line["reference"], None)
    assert line["originator"] == payments.originator() and len(line["originator"]) == 32
    assert (line["account"], line["routing"], line["amount"]) == ("****6789", "011000015", "600.00")


def test_the_originator_is_made_once_and_kept(app: Flask, mesh: Mesh) -> None:
    from hms.ach.models import Setting

    payments = app.extensions["hms.ach"].payer
    first = payments.originator()
    payments._originator = None  # a new process of the same deployment reads it back
    assert payments.originator() == first
    with mesh.stores["ach"].session() as s:
        assert s.get(Setting, "originator").value == first


def test_recording_a_payment_sent_twice_keeps_the_first_record(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    payments, claim_id, pid = held_payment(app, client, token, mesh)
    payments.pay(pid)
    before = payment_for(mesh, claim_id)
    published = []
    outbox = mesh.stores["ach"].events
    emit = outbox.emit
    outbox.emit = lambda s, subject, data, **kw: published.append(subject) or emit(s, subject, data, **kw)
    try:
        payments._sent(pid, "SOME-OTHER-REFERENCE")
    finally:
        outbox.emit = emit
    after = payment_for(mesh, claim_id)
    assert (after.bank_reference, after.sent_at) == (before.bank_reference, before.sent_at) and published == []


def test_a_retry_never_touches_a_payment_no_longer_sending(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    payments, claim_id, pid = held_payment(app, client, token, mesh)
    payments.pay(pid)
    payments._retry(pid, "late news from a slow thread", counted=True)
    p = payment_for(mesh, claim_id)
    assert (p.state, p.last_error, p.attempts) == ("sent", None, 1)


def test_a_long_bank_error_is_kept_to_300_characters(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    from hms.ach.bank import BankUnavailable

    payments, claim_id, pid = held_payment(app, client, token, mesh)

    def unavailable(t: Any) -> str:
        raise BankUnavailable("E" * 400)

    payments.bank.transfer = unavailable
    assert payments.pay(pid) == "retry"
    assert payment_for(mesh, claim_id).last_error == "E" * 300


def test_a_recovered_send_keeps_the_banks_reference(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    from hms.ach.bank import Transfer

    payments, claim_id, pid = held_payment(app, client, token, mesh)
    p = payment_for(mesh, claim_id)
    reference = payments.bank.transfer(
        Transfer(p.idempotency_key, claim_id, p.amount, "011000015", "000123456789", payments.originator())
    )
    crash_mid_send(mesh, claim_id)
    payments._recover(p.id)
    assert (payment_for(mesh, claim_id).state, payment_for(mesh, claim_id).bank_reference) == ("sent", reference)


def test_ach_ledger_counts_transfers_and_lists_strays_on_its_last_page(
    app: Flask, client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    import json

    payments, claim_id, pid = held_payment(app, client, token, mesh)
    gateway = mesh.credentials("gateway")
    before = mesh.bus.request("ach.payments.ledger", {"limit": 10}, 5, headers=gateway)
    assert before == {
        "items": [{"claimId": claim_id, "paymentId": pid, "state": "pending", "bankTransfers": 0}],
        "next": None,
        "unmatchedTransfers": [],
    }
    payments.pay(pid)
    statement = Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])
    line = json.loads(statement.read_text())
    with statement.open("a") as f:  # a transfer of ours for a claim ach never had
        f.write(json.dumps({**line, "claimId": "stray"}) + "\n")
    after = mesh.bus.request("ach.payments.ledger", {"limit": 10}, 5, headers=gateway)
    assert after["items"] == [{"claimId": claim_id, "paymentId": pid, "state": "sent", "bankTransfers": 1}]
    assert after["unmatchedTransfers"] == ["stray"]


def test_staff_see_no_account_when_none_was_registered(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    from hms.bus import ReplyError

    claim_id = orphan_payment(app, client, token, mesh, "noor")
    found = ask_gateway(mesh, "ach.payments.get", {"claimId": claim_id})
    assert (found["account"], found["accountType"], found["state"]) == (None, None, "pending")
    with pytest.raises(ReplyError) as missing:
        ask_gateway(mesh, "ach.payments.get", {"claimId": "none"})
    assert (missing.value.title, missing.value.detail) == ("Not found", "no payment for this claim")


def test_a_recovery_puts_back_only_its_own_payment(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    """Two sends cut short with the same stamp (same dead worker, same instant): recovering one of them must not
    put back the other, which the bank may hold. Catches: `Payment.id == …` dropped from the reset."""
    payments = app.extensions["hms.ach"].payer
    mesh.workers["ach.payments"].stop()
    a, b = (approved_and_recorded(client, token, mesh, sub) for sub in ("ana", "ben"))
    stamp = utcnow() - timedelta(minutes=5)
    ids = [payment_for(mesh, claim_id).id for claim_id in (a, b)]
    with mesh.stores["ach"].session() as s:
        for pid in ids:
            p = s.get(Payment, pid)
            p.state, p.attempts, p.claimed_at, p.claimed_by = "sending", 1, stamp, "dead-worker"
    payments._recover(payment_for(mesh, a).id)
    assert payment_for(mesh, a).state == "pending"
    assert (payment_for(mesh, b).state, payment_for(mesh, b).claimed_by) == ("sending", "dead-worker")


def approved_and_recorded(client: FlaskClient, token: Any, mesh: Mesh, sub: str) -> str:
    claim_id = str(client.post("/claims", json=DIEGO, headers=token(sub)).json["id"])
    eventually(lambda: payment_for_or_none(mesh, claim_id))
    return claim_id


def test_idempotency_records_are_pruned_only_when_old(app: Flask, mesh: Mesh) -> None:
    from hms.svc.models import IdempotencyRecord

    claims = app.extensions["hms.svc"]
    first = submit(mesh, "kai", idempotencyKey="k-old")
    submit(mesh, "lea", idempotencyKey="k-new")
    assert claims.prune_idempotency(timedelta(days=1)) == 0
    with mesh.stores["svc"].session() as s:
        s.get(IdempotencyRecord, ("kai", "k-old")).created_at = utcnow() - timedelta(days=2)
    assert claims.prune_idempotency(timedelta(days=1)) == 1
    with mesh.stores["svc"].session() as s:
        assert s.get(IdempotencyRecord, ("kai", "k-old")) is None and s.get(IdempotencyRecord, ("lea", "k-new"))
    assert submit(mesh, "kai", idempotencyKey="k-old")["id"] != first["id"]  # a new submit now


def test_an_empty_list_and_a_page_of_one(mesh: Mesh) -> None:
    from hms.svc.models import Claim

    empty = ask_svc(mesh, "svc.claims.list", {"page": 1, "pageSize": 10})
    assert (empty["items"], empty["total"]) == ([], 0)
    ids = [submit(mesh, "kai")["id"], submit(mesh, "lea")["id"]]
    with mesh.stores["svc"].session() as s:  # filed at the same instant: the id breaks the tie
        same = utcnow()
        for claim_id in ids:
            s.get(Claim, claim_id).submitted_at = same
    one = ask_svc(mesh, "svc.claims.list", {"page": 1, "pageSize": 1})
    assert [c["id"] for c in one["items"]] == [min(ids)] and one["total"] == 2
    two = ask_svc(mesh, "svc.claims.list", {"page": 2, "pageSize": 1})
    assert [c["id"] for c in two["items"]] == [max(ids)]


def test_the_claims_ledger_reports_status_and_a_full_last_page(mesh: Mesh) -> None:
    made = [submit(mesh, "kai"), submit(mesh, "lea", separationReason="quit"), submit(mesh, "max")]
    status = {c["id"]: c["status"] for c in made}
    full = ask_svc(mesh, "svc.claims.ledger", {"after": None, "limit": 3})
    assert full["items"] == [{"claimId": i, "status": status[i]} for i in sorted(status)]
    assert full["next"] == sorted(status)[2]
    assert ask_svc(mesh, "svc.claims.ledger", {"after": full["next"], "limit": 3}) == {"items": [], "next": None}


def test_only_the_duplicate_reason_names_the_open_claim(mesh: Mesh) -> None:
    first = submit(mesh, "kai")
    second = submit(mesh, "kai", separationReason="quit")
    assert [r.get("claimId") for r in second["reasonDetails"]] == [None, first["id"]]
    assert [r["code"] for r in second["reasonDetails"]] == ["INELIGIBLE_SEPARATION", "DUPLICATE_CLAIM"]


def test_a_failed_payment_reported_twice_changes_nothing(
    app: Flask, mesh: Mesh, client: FlaskClient, token: Any
) -> None:
    body = {**DIEGO, "directDeposit": {**DIEGO["directDeposit"], "accountNumber": "999900001234"}}
    failed = client.post("/claims", json=body, headers=token("lea")).json
    f = eventually(
        lambda: (c := ask_svc(mesh, "svc.claims.get", {"claimId": failed["id"]}))["status"] == "payment_failed" and c
    )
    again = {"claimId": failed["id"], "citizen": "lea", "reason": "ACCOUNT_CLOSED", "attempts": 1}
    mesh.bus.publish("payment.failed", again, headers=mesh.credentials("ach")).result(5)
    eventually(lambda: mesh.stores["svc"].outbox_backlog() == 0)
    assert ask_svc(mesh, "svc.claims.get", {"claimId": failed["id"]})["timeline"] == f["timeline"]
    assert mesh.stores["svc"].list_dead_letters() == []


def published_traces(mesh: Mesh) -> list[tuple[str, str | None]]:
    """From now on, the subject and traceparent of every event the mesh publishes."""
    seen: list[tuple[str, str | None]] = []
    publish = mesh.bus.publish

    def recording(subject: str, data: dict[str, Any], **kw: Any) -> Any:
        seen.append((subject, kw.get("traceparent")))
        return publish(subject, data, **kw)

    mesh.bus.publish = recording  # type: ignore[method-assign]
    return seen


def test_a_failed_payment_carries_the_claims_trace(mesh: Mesh, client: FlaskClient, token: Any) -> None:
    trace = "0af7651916cd43dd8448eb211c80319c"
    seen = published_traces(mesh)
    body = {**DIEGO, "directDeposit": {**DIEGO["directDeposit"], "accountNumber": "999900001234"}}
    headers = {**token("lea"), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    assert client.post("/claims", json=body, headers=headers).status_code == 201
    parent = eventually(lambda: next((t for s, t in seen if s == "payment.failed"), None))
    assert parent.split("-")[1] == trace


@pytest.mark.parametrize(("lease", "latency_ms", "warned"), [(1.0, 400, False), (0.2, 150, True)])
def test_a_bank_call_past_half_the_lease_is_logged(
    app: Flask,
    client: FlaskClient,
    token: Any,
    mesh: Mesh,
    caplog: pytest.LogCaptureFixture,
    lease: float,
    latency_ms: int,
    warned: bool,
) -> None:
    import logging

    payments, claim_id, pid = held_payment(app, client, token, mesh)
    payments.lease, payments.bank.latency_ms = lease, latency_ms
    caplog.set_level(logging.ERROR, logger="hms.ach")
    assert payments.pay(pid) == "sent"
    assert any("near the" in r.getMessage() and "send lease" in r.getMessage() for r in caplog.records) == warned


def test_a_declined_transfer_fails_the_payment(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    payments = app.extensions["hms.ach"].payer
    mesh.workers["ach.payments"].stop()
    body = {**DIEGO, "directDeposit": {**DIEGO["directDeposit"], "accountNumber": "999900001234"}}
    claim_id = client.post("/claims", json=body, headers=token("zoe")).json["id"]
    eventually(lambda: payment_for_or_none(mesh, claim_id))
    assert payments.pay(payment_for(mesh, claim_id).id) == "failed"
    assert (payment_for(mesh, claim_id).state, payment_for(mesh, claim_id).last_error) == ("failed", "ACCOUNT_CLOSED")


def register(mesh: Mesh, citizen: str, claim_id: str | None = None, **changes: str) -> Any:
    """Register an account: for a claim (contract v2), or for the citizen alone (v1, claim_id None)."""
    details = {**DIEGO["directDeposit"], **changes}
    if claim_id is None:
        return ask_gateway(mesh, "ach.accounts.register", {"citizen": citizen, **details})
    return ask_gateway(mesh, "ach.accounts.register", {"citizen": citizen, "claimId": claim_id, **details}, 2)


def test_each_claims_account_is_kept_as_given(mesh: Mesh) -> None:
    from hms.bus import ReplyError

    first = register(mesh, "kai", "c1", accountNumber="111122223333", accountType="savings")
    assert first == {"accountId": first["accountId"], "account": "****3333", "accountType": "savings"}
    assert register(mesh, "kai", "c1", accountNumber="111122223333", accountType="savings") == first  # a retry
    second = register(mesh, "kai", "c2", accountNumber="777788889999")
    assert second["accountId"] != first["accountId"] and second["account"] == "****9999"
    old_gateway = [register(mesh, "kai", accountNumber=n)["accountId"] for n in ("444455556666", "123412341234")]
    assert len(set(old_gateway) | {first["accountId"], second["accountId"]}) == 4  # each v1 registration a row
    with pytest.raises(ReplyError) as taken:
        register(mesh, "lea", "c1")
    e = taken.value
    assert (e.status, e.title, e.detail, e.field) == (
        409,
        "Claim exists",
        "this claim id belongs to another citizen",
        "claimId",
    )
    with mesh.stores["ach"].session() as s:
        rows = {a.claim_id: (a.citizen, a.account_number, a.account_type) for a in s.query(Account)}
    assert rows["c1"] == ("kai", "111122223333", "savings") and rows["c2"] == ("kai", "777788889999", "checking")
    assert ("lea" in {c for c, _, _ in rows.values()}) is False


def test_a_denied_claims_bank_details_are_deleted_and_an_approved_ones_kept(
    client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    """Details reach ach before the decision; a denial deletes them. Catches: the claim filter dropped (every
    account deleted) or the consumer gone."""

    approved = client.post("/claims", json=DIEGO, headers=token("kai")).json
    other = {**DIEGO["directDeposit"], "accountNumber": "111122223333"}
    denied = client.post(
        "/claims", json={**DIEGO, "separationReason": "quit", "directDeposit": other}, headers=token("lea")
    ).json
    assert (approved["status"], denied["status"]) == ("approved", "denied")

    def accounts() -> dict[str | None, str]:
        with mesh.stores["ach"].session() as s:
            return {a.claim_id: a.account_number for a in s.query(Account)}

    eventually(lambda: denied["id"] not in accounts())
    assert accounts() == {approved["id"]: DIEGO["directDeposit"]["accountNumber"]}


@pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)
def test_bank_details_of_a_submission_svc_did_not_file_are_deleted(
    client: FlaskClient, token: Any, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway registers the details under a new claim id before svc decides; when svc files nothing under
    that id — a replay answered with the earlier claim, an Idempotency-Key reused with another body, no svc process
    — the gateway has ach delete them, and the claim that was filed keeps its account and is paid once.
    Catches: any of those three cases not unregistering (a second, third or fourth row for the citizen)."""
    import hms.gateway.api as api
    from hms.bus import NoResponders

    kai = {**token("kai"), "Idempotency-Key": "first"}
    first = client.post("/claims", json=DIEGO, headers=kai)
    again = client.post("/claims", json=DIEGO, headers=kai)
    assert (first.status_code, again.status_code, again.headers.get("Idempotent-Replayed")) == (201, 201, "true")
    assert again.json == first.json  # the earlier claim as it was answered, its account's masked number too
    other_body = client.post("/claims", json={**DIEGO, "weeksWorked": 30}, headers=kai)
    assert other_body.status_code == 422 and "Idempotency-Key" in other_body.json["detail"]
    real_send = api.send

    def send(subject: str, data: dict[str, Any], version: int = 1) -> Any:
        if subject == "svc.claims.submit":
            raise NoResponders(subject)  # what the bus raises when no svc process is running
        return real_send(subject, data, version)

    monkeypatch.setattr(api, "send", send)
    assert client.post("/claims", json=DIEGO, headers={**kai, "Idempotency-Key": "second"}).status_code == 503
    monkeypatch.setattr(api, "send", real_send)
    assert details_of(mesh, "kai") == {first.json["id"]}
    eventually(lambda: payment_for_or_none(mesh, first.json["id"]) is not None)
    assert client.get(f"/claims/{first.json['id']}", headers=token("kai")).json["status"] in ("approved", "paid")


@pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)
def test_ach_forgets_only_the_citizens_own_unused_details(client: FlaskClient, token: Any, mesh: Mesh) -> None:
    """`ach.accounts.forget` deletes the details under a claim id only for their citizen and only while no
    payment uses them, and a registration under an id it forgot (deleted, or none there yet) is refused later.
    Catches: the citizen or the payment condition dropped from the deletion, the id not remembered, kept details
    remembered as forgotten."""
    from hms.bus import ReplyError

    paid = client.post("/claims", json=DIEGO, headers=token("kai")).json
    eventually(lambda: payment_for_or_none(mesh, paid["id"]) is not None)
    register(mesh, "lea", "unfiled")
    forget = "ach.accounts.forget"
    assert ask_gateway(mesh, forget, {"citizen": "kai", "claimId": paid["id"]}) == {"forgotten": False}
    assert ask_gateway(mesh, forget, {"citizen": "kai", "claimId": "unfiled"}) == {"forgotten": False}
    assert {paid["id"], "unfiled"} <= details_of(mesh)
    assert ask_gateway(mesh, forget, {"citizen": "lea", "claimId": "unfiled"}) == {"forgotten": True}
    assert "unfiled" not in details_of(mesh) and paid["id"] in details_of(mesh)
    assert ask_gateway(mesh, forget, {"citizen": "lea", "claimId": "never-registered"}) == {"forgotten": False}
    for claim_id in ("unfiled", "never-registered"):  # forgotten: a registration arriving later stores nothing
        with pytest.raises(ReplyError) as refused:
            register(mesh, "lea", claim_id)
        e = refused.value
        assert (e.status, e.title, e.detail, e.field) == (
            409,
            "Registration withdrawn",
            "the submission these details came with was withdrawn",
            "claimId",
        )
        assert claim_id not in details_of(mesh)
    # details kept (a payment uses them) are not forgotten: their registration is still answered
    assert register(mesh, "kai", paid["id"])["account"] == "****6789"


@pytest.mark.parametrize("bus_url", ["memory", "nats"], indirect=True)
def test_the_sweep_deletes_only_old_details_no_filed_claim_will_use(
    client: FlaskClient, token: Any, mesh: Mesh
) -> None:
    """`hms audit sweep-accounts`: of the details no payment uses, those registered for a submission svc never
    filed (a gateway stopped between the two requests) are deleted, and that submission can never be filed nor its
    details come back; those of a filed claim whose approval waits in ach's dead letters are kept, so its replay
    pays; young ones are left alone. Catches: a filed claim's details deleted, an unused account missed, a payment's
    details or a young account listed, a swept id filed later."""
    from hms.bus import ReplyError
    from hms.gateway.reconcile import sweep_accounts

    paid = client.post("/claims", json=DIEGO, headers=token("kai")).json  # its details are its payment's
    eventually(lambda: payment_for_or_none(mesh, paid["id"]) is not None)
    # filed with no details yet; its id starts with a digit, as a uuid may (it sorts before letters)
    submit_v2(mesh, "omar", "0-filed")
    (dead,) = eventually(lambda: ask_gateway(mesh, "ach.deadletters.list", {})["items"])
    register(mesh, "omar", "0-filed")  # given later: its approval, replayed, pays into them
    register(mesh, "lea", "orphan-1")  # the submission never reached svc
    register(mesh, "lea")  # no claim (contract v1): not the sweep's
    with mesh.stores["ach"].session() as s:
        for a in s.query(Account):
            a.registered_at = utcnow() - timedelta(hours=2)
    register(mesh, "lea", "young-1")  # a submission that may still be on its way
    unused = [ask_gateway(mesh, "ach.accounts.unused", {"olderThanSeconds": 3600, "limit": 1})]
    for _ in range(3):  # a page at a time, following the cursor (bounded: a cursor ignored must fail, not loop)
        if unused[-1]["next"]:
            page = {"olderThanSeconds": 3600, "limit": 1, "after": unused[-1]["next"]}
            unused.append(ask_gateway(mesh, "ach.accounts.unused", page))
    assert unused == [
        {"items": [{"claimId": "0-filed", "citizen": "omar"}], "next": "0-filed"},
        {"items": [{"claimId": "orphan-1", "citizen": "lea"}], "next": "orphan-1"},
        {"items": [], "next": None},
    ]

    swept = sweep_accounts(mesh.bus, 3600, headers=mesh.credentials("gateway"))
    assert (swept.deleted, swept.kept, swept.failed) == (["orphan-1"], ["0-filed"], [])
    assert details_of(mesh) == {paid["id"], "0-filed", "young-1", None}
    # A second gateway sweeping at the same time listed the same two: its requests change nothing the second time.
    orphan, filed_claim = {"citizen": "lea", "claimId": "orphan-1"}, {"citizen": "omar", "claimId": "0-filed"}
    assert ask_gateway(mesh, "svc.claims.withdraw", orphan) == {"filed": False}
    assert ask_gateway(mesh, "svc.claims.withdraw", filed_claim) == {"filed": True}
    ask_gateway(mesh, "ach.accounts.forget", orphan)
    assert details_of(mesh) == {paid["id"], "0-filed", "young-1", None}
    with pytest.raises(ReplyError) as filed:
        submit_v2(mesh, "lea", "orphan-1")
    with pytest.raises(ReplyError) as registered:
        register(mesh, "lea", "orphan-1")
    assert (filed.value.status, filed.value.title) == (409, "Submission withdrawn")
    assert (registered.value.status, registered.value.title) == (409, "Registration withdrawn")
    ask_gateway(mesh, "ach.deadletters.replay", {"id": dead["id"]})
    eventually(lambda: (p := payment_for_or_none(mesh, "0-filed")) is not None and p.state == "sent")


def test_a_routing_number_failing_its_checksum_is_refused_by_ach(mesh: Mesh) -> None:
    from hms.bus import ReplyError

    with pytest.raises(ReplyError) as refused:
        register(mesh, "kai", "c1", routingNumber="011000016")
    e = refused.value
    assert (e.status, e.title, e.detail, e.field) == (
        422,
        "Invalid bank details",
        "routingNumber fails the ABA routing-number checksum",
        "directDeposit.routingNumber",
    )


def test_a_denied_claim_does_not_block_the_next_one(mesh: Mesh) -> None:
    """Catches: the status condition dropped from the open-claim lookup (one denial would block for good)."""
    denied = submit(mesh, "kai", separationReason="quit")
    assert (denied["status"], denied["reasons"], denied["duplicateOf"]) == ("denied", ["INELIGIBLE_SEPARATION"], None)
    later = submit(mesh, "kai")
    assert (later["status"], later["reasons"], later["duplicateOf"]) == ("approved", [], None)


def test_the_claim_view_says_everything_svc_decided(mesh: Mesh) -> None:
    approved = submit(mesh, "kai")
    assert approved == {
        "id": approved["id"],
        "citizen": "kai",
        "status": "approved",
        "amount": 600.0,
        "reasons": [],
        "reasonDetails": [],
        "duplicateOf": None,
        "ruleVersion": RuleSet.load().version,
        "employer": "Acme Corp",
        "claimant": {"name": "Diego Ramos", "email": "diego@example.org", "ssnLast4": "1234"},
        "separationReason": "laid_off",
        "weeksWorked": 40,
        "baseWages": 31200.0,
        "submittedAt": approved["submittedAt"],
        "decidedAt": approved["submittedAt"],
        "paymentId": None,
        "failureReason": None,
        "timeline": [
            {"status": "submitted", "at": approved["submittedAt"], "detail": None},
            {"status": "approved", "at": approved["submittedAt"], "detail": None},
        ],
    }
    assert approved["submittedAt"].endswith("Z")
    denied = submit(mesh, "kai", separationReason="quit", weeksWorked=5)
    assert (denied["amount"], denied["status"], denied["duplicateOf"]) == (None, "denied", approved["id"])
    assert denied["timeline"][1] == {
        "status": "denied",
        "at": denied["submittedAt"],
        "detail": "INELIGIBLE_SEPARATION,INSUFFICIENT_WEEKS,DUPLICATE_CLAIM",
    }
    assert ask_svc(mesh, "svc.claims.get", {"claimId": denied["id"]}) == denied


def test_a_denial_carries_the_claims_trace(mesh: Mesh, client: FlaskClient, token: Any) -> None:
    trace = "1af7651916cd43dd8448eb211c80319d"
    seen = published_traces(mesh)
    headers = {**token("lea"), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"}
    assert client.post("/claims", json={**DIEGO, "separationReason": "quit"}, headers=headers).status_code == 201
    parents = eventually(lambda: len(p := [t for s, t in seen if s in ("claim.submitted", "claim.denied")]) == 2 and p)
    assert all(t.split("-")[1] == trace for t in parents), parents


def test_the_worker_pays_only_what_is_due_oldest_first(app: Flask, client: FlaskClient, token: Any, mesh: Mesh) -> None:
    """Catches: the due condition dropped (backoff ignored), the due order dropped, a wrong count returned."""
    payments = app.extensions["hms.ach"].payer
    mesh.workers["ach.payments"].stop()
    ids = {sub: payment_for(mesh, approved_and_recorded(client, token, mesh, sub)).id for sub in ("ann", "bob", "cy")}
    now = utcnow()
    with mesh.stores["ach"].session() as s:
        s.get(Payment, ids["ann"]).next_attempt_at = now + timedelta(hours=1)  # backing off
        s.get(Payment, ids["bob"]).next_attempt_at = now - timedelta(seconds=5)
        s.get(Payment, ids["cy"]).next_attempt_at = now - timedelta(seconds=50)  # due the longest
    assert payments.run_once(limit=1) == 1

    def state(sub: str) -> str:
        with mesh.stores["ach"].session() as s:
            return s.get(Payment, ids[sub]).state

    assert [state(s) for s in ("ann", "bob", "cy")] == ["pending", "pending", "sent"]
    assert payments.run_once() == 1
    assert [state(s) for s in ("ann", "bob", "cy")] == ["pending", "sent", "sent"]
    assert payments.run_once() == 0 and len(transfers(app)) == 2


def other_worker_instance(payments: Payer) -> str:
    """The claim stamp another worker of the same service would write."""
    return Payer(payments.units, payments.bank, payments.breaker).instance


def test_svc_tells_discovery_its_rule_version_and_outbox(mesh: Mesh) -> None:
    from hms.bus.registry import discover

    [svc] = [s for s in discover(mesh.bus) if s["name"] == "svc"]
    assert svc["health"] == {"status": "ok", "outbox": 0, "unverifiable": 0, "ruleVersion": RuleSet.load(None).version}


def test_every_payment_setting_reaches_the_bank_the_breaker_and_the_payer(
    settings: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each HMS_ACH_* value is the one the payments service runs with (a dropped one would fall back silently)."""
    import logging

    from hms import create_app
    from hms.ach.bank import BankDeclined
    from hms.runtime import mesh_of

    custom = {
        "HMS_ACH_SANDBOX_LATENCY_MS": 7,
        "HMS_ACH_SANDBOX_FAIL_RATE": 0.25,
        "HMS_ACH_SANDBOX_OUTAGE_FILE": str(tmp_path / "down"),
        "HMS_ACH_BREAKER_FAIL_MAX": 4,
        "HMS_ACH_BREAKER_RESET_S": 12.0,
        "HMS_ACH_RETRY_BASE_S": 0.3,
        "HMS_ACH_RETRY_MAX_S": 45.0,
        "HMS_ACH_SEND_LEASE_S": 17.0,
    }
    app = create_app({**settings, **custom})
    try:
        ach = app.extensions["hms.ach"]
        assert (ach.bank.latency_ms, ach.bank.fail_rate, ach.bank.outage_file) == (7, 0.25, tmp_path / "down")
        assert ach.bank.statement == Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])
        b = ach.breaker
        assert (b.fail_max, b.reset_timeout, b.name) == (4, 12.0, "bank")
        assert BankDeclined in b.excluded_exceptions  # a declined transfer is the citizen's account, not an outage
        p = ach.payer
        assert (p.retry_base, p.retry_max, p.lease) == (0.3, 45.0, 17.0)
        assert p.bank is ach.bank and p.breaker is b
        caplog.set_level(logging.WARNING, logger="hms.ach")
        b.open()
        assert "bank breaker closed -> open" in caplog.text  # state changes are logged for operators
    finally:
        mesh_of(app).close()


def test_the_sandbox_bank_returns_nothing_so_there_is_nothing_to_pay_again(client: FlaskClient, token: Any) -> None:
    claim = client.post("/claims", json=DIEGO, headers=token("lee")).json
    again = client.put(f"/claims/{claim['id']}/direct-deposit", json=DIEGO["directDeposit"], headers=token("lee"))
    assert again.status_code == 409 and again.json["title"] == "No ACH rail"
    assert again.json["detail"] == "payments here go through the sandbox bank, which returns none"


def test_an_unknown_bank_provider_is_refused_by_name(tmp_path: Path) -> None:
    from hms.config import ConfigError, load

    with pytest.raises(ConfigError) as refused:
        load({"HMS_ACH_PROVIDER": "carrier-pigeon"}, str(tmp_path))
    assert str(refused.value) == "HMS_ACH_PROVIDER: expected sandbox or nacha, got 'carrier-pigeon'"


def test_svc_decides_by_the_configured_rules_file(settings: dict[str, Any], tmp_path: Path) -> None:
    import json

    from hms import create_app
    from hms.bus.registry import discover
    from hms.runtime import mesh_of
    from hms.svc.rules import DEFAULT_RULES

    rules = json.loads(DEFAULT_RULES.read_text())
    rules["version"] = "2027.test"
    for rule in rules["rules"]:
        if rule["kind"] == "min_weeks_worked":
            rule["min"] = 45  # Diego's 40 weeks are no longer enough
    (tmp_path / "rules.json").write_text(json.dumps(rules))
    app = create_app({**settings, "HMS_RULES_FILE": str(tmp_path / "rules.json")})
    mesh = mesh_of(app)
    try:
        mesh.upgrade()
        decided = submit(mesh, "uma")
        assert (decided["status"], decided["reasons"], decided["ruleVersion"]) == (
            "denied",
            ["INSUFFICIENT_WEEKS"],
            "2027.test",
        )
        [svc] = [s for s in discover(mesh.bus) if s["name"] == "svc"]
        assert svc["health"]["ruleVersion"] == "2027.test"
    finally:
        mesh.close()


def test_the_hourly_chore_forgets_idempotency_keys_past_their_retention(
    settings: dict[str, Any], app: Flask, mesh: Mesh
) -> None:
    from hms.svc.models import IdempotencyRecord

    claims = app.extensions["hms.svc"]
    assert claims.keep_keys == timedelta(days=app.config["HMS_IDEMPOTENCY_RETENTION_DAYS"])
    submit(mesh, "old", idempotencyKey="k-old")
    submit(mesh, "new", idempotencyKey="k-new")
    with mesh.stores["svc"].session() as s:
        s.get_one(IdempotencyRecord, ("old", "k-old")).created_at = utcnow() - claims.keep_keys - timedelta(hours=1)
    claims.prune()
    with mesh.stores["svc"].session() as s:
        assert s.get(IdempotencyRecord, ("old", "k-old")) is None
        assert s.get(IdempotencyRecord, ("new", "k-new")) is not None


def test_staff_see_the_newest_claims_first(mesh: Mesh) -> None:
    ids = [submit(mesh, f"n{i}")["id"] for i in range(6)]  # six ids: their own order matches by chance 1 in 720
    listed = ask_svc(mesh, "svc.claims.list", {"page": 1, "pageSize": 10})
    assert [c["id"] for c in listed["items"]] == ids[::-1]
