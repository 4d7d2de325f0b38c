"""The HTTP API: thin views that check the caller, then ask the services over the bus."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import uuid
from typing import Any

from flask import Response, current_app, g
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import RAISE

from hms.bus import BusError, BusTimeout, NoResponders, Reply, ReplyError, bus_of
from hms.bus.registry import discover

from . import schemas as s
from .problems import Problem
from .ratelimit import retry_after
from .security import identity, requires

log = logging.getLogger("hms.gateway")
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
claims = Blueprint("claims", __name__, url_prefix="/claims", description="Unemployment claims")
audit = Blueprint("audit", __name__, url_prefix="/audit", description="Reports for auditors")
mesh = Blueprint("mesh", __name__, url_prefix="/mesh", description="The service registry")
health = Blueprint("health", __name__, description="Liveness and readiness")
# Schemas built once (webargs builds a schema given to `arguments` as a class again on every request).
CLAIM_IN, DEPOSIT_IN, REPORT_QUERY = s.ClaimIn(), s.DirectDepositIn(), s.ReportQuery()
NOT_FILED = frozenset({400, 403, 422})  # svc's refusals of a request before or instead of filing it (not 409)


def send(subject: str, data: dict[str, Any], version: int = 1) -> Reply:
    """Send a request to a service over the bus, as the gateway, with the configured timeout; answered later."""
    return bus_of(current_app).send_request(subject, data, current_app.config["HMS_REQUEST_TIMEOUT_S"], version=version)


def ask(subject: str, data: dict[str, Any], version: int = 1) -> Any:
    """Request/reply to a service over the bus, as the gateway, with the configured timeout."""
    return send(subject, data, version).result()


def submit_claim(citizen: str, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    """Submit a checked claim body for `citizen` (API and web UI): rate limit, the account, then the decision.

    The account comes before the decision, under the claim's new id: when ach refuses the details or cannot be
    reached, the citizen gets the error and nothing is decided; once svc approves, ach already holds where to pay.
    The registration goes out beside the rate limit's count rather than after it (over NATS each is a trip through
    the server), unless this process refused the citizen lately (then the count comes first until the wait it gave
    is over: a citizen hammering past the limit costs ach one registration and its deletion a wait and process).
    Details registered for a submission svc then does not file under that id are deleted again (`_unregister`); a
    denied claim's ach deletes on `claim.denied`. When svc does not answer in time, the gateway asks it whether it
    filed the claim, and withdraws the submission if not (`_withdraw`); when ach does not, svc is not asked.
    """
    limiter = current_app.extensions["hms.ratelimit"]
    claim_id = str(uuid.uuid4())

    def register() -> Reply:
        return send("ach.accounts.register", {"citizen": citizen, "claimId": claim_id, **body["directDeposit"]}, 2)

    registration = None if limiter.refused_lately(citizen) else register()
    wait = limiter.acquire(citizen)
    if wait:
        if registration is not None:
            _unregister(registration, citizen, claim_id)
        raise Problem(
            429,
            "Too many requests",
            "too many claims submitted; try again later",
            headers={"Retry-After": retry_after(wait)},
        )
    registration = registration or register()
    try:  # on a refusal, _unregister finds out whether it was the registration's (then nothing is stored) or svc's
        account = registration.result()
        claim = _decide(citizen, claim_id, body, idempotency_key)
    except NoResponders:
        limiter.release(citizen)  # nothing served the request, so nothing was filed: a retry must not count twice
        _unregister(registration, citizen, claim_id)
        raise
    except ReplyError as exc:
        if exc.status in NOT_FILED:
            _unregister(registration, citizen, claim_id)
        raise
    except BusTimeout as exc:
        try:
            account = registration.result()  # raises again if it was the registration that timed out
        except BusTimeout:  # svc was not asked: ach forgets the details, and refuses them if they come later
            filed = None
        else:
            filed = _withdraw(citizen, claim_id, exc)
        if filed is None:  # withdrawn: nothing was filed, nor ever will be
            limiter.release(citizen)
            _unregister(registration, citizen, claim_id)
            raise Problem(
                504, "Service timeout", "the claim was not decided in time and nothing was filed; submit it again"
            ) from None
        claim = filed
    if claim["id"] != claim_id:  # a replay: svc answered with the claim filed earlier under this Idempotency-Key
        _unregister(registration, citizen, claim_id)
    if claim["status"] != "denied":  # a replay's body matched the first's (its fingerprint): the same account
        claim["account"] = account["account"]
    return claim


def _unregister(registration: Reply, citizen: str, claim_id: str) -> None:
    """Have ach delete the details registered under `claim_id`, which svc did not file: no claim will name them.

    Once the registration has answered (a `Reply` read again answers as it did): a registration ach refused or
    no ach process got stored nothing. One not answered in time may still come: ach then refuses it, as it
    remembers the id as forgotten. Best effort: the citizen's answer stands, and details left behind are logged.
    """
    try:
        registration.result()
    except (ReplyError, NoResponders):
        return  # ach refused the details, or no ach process got them: nothing was stored
    except BusError:
        pass  # not answered in time (or not at all): ach may store them yet, so it must forget and refuse them
    try:
        ask("ach.accounts.forget", {"citizen": citizen, "claimId": claim_id})
    except BusError as exc:
        log.warning("bank details of unfiled claim %s may be left in ach: %s", claim_id, exc)


def _withdraw(citizen: str, claim_id: str, timeout: BusTimeout) -> dict[str, Any] | None:
    """svc did not answer the submit in time: it may still be deciding, or never have got it. Ask it (under the
    citizen's lock, so after a decision under way) whether it filed the claim: the claim if it did; None if not, and
    then svc has recorded that it never will. If svc cannot say, `timeout` is raised again and the details stay
    (logged); if it filed the claim but cannot show it, `timeout` too (the details are the claim's)."""
    try:
        filed = ask("svc.claims.withdraw", {"citizen": citizen, "claimId": claim_id})["filed"]
    except BusError as exc:
        log.warning(
            "svc could not say whether it filed claim %s; its bank details may be left in ach: %s", claim_id, exc
        )
        raise timeout from None
    if not filed:
        return None
    try:
        claim: dict[str, Any] = ask("svc.claims.get", {"claimId": claim_id, "citizen": citizen})
    except BusError:
        raise timeout from None  # the citizen finds the claim in their list
    return claim


def _decide(citizen: str, claim_id: str, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    claim: dict[str, Any] = ask(
        "svc.claims.submit",
        {
            "citizen": citizen,
            "claimId": claim_id,
            "claimant": body["claimant"],
            "employer": body["employer"],
            "separationReason": body["separationReason"],
            "weeksWorked": body["weeksWorked"],
            "baseWages": body["baseWages"],
            "idempotencyKey": idempotency_key,
            "fingerprint": fingerprint(body),
            "traceparent": g.traceparent,
        },
        2,
    )
    return claim


def fingerprint(body: dict[str, Any]) -> str:
    """A hash of the request body, to tell a retry from a different request under the same key."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@claims.route("")
class Claims(MethodView):
    @claims.doc(security=BEARER)
    @requires("citizen")
    @claims.arguments(s.SubmitHeaders(), location="headers", as_kwargs=True)
    @claims.arguments(CLAIM_IN)
    @claims.response(201, s.ClaimOut)
    def post(self, body: dict[str, Any], idempotency_key: str | None = None) -> Any:
        """Submit a claim; a retry with the same Idempotency-Key returns the first result."""
        claim = submit_claim(identity().sub, body, idempotency_key)
        headers = {"Location": f"/claims/{claim['id']}"}
        if claim.pop("replayed", False):
            headers["Idempotent-Replayed"] = "true"
        return claim, 201, headers

    @claims.doc(security=BEARER)
    @requires("citizen", "caseworker")
    @claims.arguments(s.ClaimListQuery(), location="query", unknown=RAISE)
    @claims.response(200, s.ClaimPage)
    def get(self, query: dict[str, Any]) -> Any:
        """List claims: a citizen sees their own, a caseworker all of them."""
        who = identity()
        return ask("svc.claims.list", {**query, "citizen": who.sub if who.role == "citizen" else None})


@claims.route("/<claim_id>")
class ClaimById(MethodView):
    @claims.doc(security=BEARER)
    @requires("citizen", "caseworker", "auditor")
    @claims.response(200, s.ClaimOut)
    def get(self, claim_id: str) -> Any:
        """One claim with its status and timeline (a citizen sees only their own)."""
        who = identity()
        if len(claim_id) > 64:
            raise Problem(404, "Not found", "no such claim", "id")
        return ask("svc.claims.get", {"claimId": claim_id, "citizen": who.sub if who.role == "citizen" else None})


@claims.route("/<claim_id>/direct-deposit")
class NewDirectDeposit(MethodView):
    @claims.doc(security=BEARER)
    @requires("citizen")
    @claims.arguments(DEPOSIT_IN)
    @claims.response(200, s.ReissueOut)
    def put(self, body: dict[str, Any], claim_id: str) -> Any:
        """New bank details for a claim whose payment the bank sent back (account closed, no account, invalid
        account number: R02, R03, R04); the payment goes out again there, once, at the next cut-off."""
        return reissue(identity().sub, claim_id, body)


def reissue(citizen: str, claim_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Ask ach to pay a returned payment again into the account `body` names (API and web UI)."""
    if len(claim_id) > 64:
        raise Problem(404, "Not found", "no such claim", "id")
    reply: dict[str, Any] = ask("ach.payments.reissue", {"citizen": citizen, "claimId": claim_id, **body})
    return reply


@audit.route("/payouts")
@audit.doc(security=BEARER)
@requires("auditor")
@audit.arguments(REPORT_QUERY, location="query", unknown=RAISE)
@audit.response(200, s.PayoutReport)
def payouts(query: dict[str, Any]) -> Any:
    """Payout time (submitted to payment sent): count, p50, p90, p99, max, by day."""
    return ask("metrics.payouts.report", {k: v for k, v in query.items() if v is not None})


@audit.route("/payouts.csv")
@audit.doc(security=BEARER)
@requires("auditor")
@audit.arguments(REPORT_QUERY, location="query", unknown=RAISE)
@audit.response(200, content_type="text/csv", description="the report by day, as CSV")
def payouts_csv(query: dict[str, Any]) -> Response:
    """The payout-time report as CSV, one row a day and one for the whole period."""
    report = ask("metrics.payouts.report", {k: v for k, v in query.items() if v is not None})
    return Response(
        report_csv(report), mimetype="text/csv", headers={"Content-Disposition": "attachment; filename=payouts.csv"}
    )


def report_csv(report: dict[str, Any]) -> str:
    """The payout report as CSV text (seconds)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["day", "count", "p50_s", "p90_s", "p99_s", "max_s"])
    for row in [*report["byDay"], {**report, "day": "all"}]:
        writer.writerow(
            [
                row["day"],
                row["count"],
                *("" if row[k] is None else f"{row[k]:.3f}" for k in ("p50", "p90", "p99", "max")),
            ]
        )
    return out.getvalue()


@mesh.route("/services")
@mesh.doc(security=BEARER)
@mesh.response(200, s.MeshOut)
@requires("admin")
def services() -> Any:
    """The registry: every service instance, its version, subjects, health and breakers."""
    return {"services": discover(bus_of(current_app))}


@health.route("/livez")
@health.response(200, s.HealthOut)
def livez() -> Any:
    """The process is alive."""
    return {"status": "ok", "checks": {}}


@health.route("/readyz")
@health.response(200, s.HealthOut)
@health.alt_response(503, schema=s.HealthOut, description="not ready")
def readyz() -> Any:
    """Ready when the bus answers and every service this process hosts says it is healthy (its database
    answers); breaker states are reported."""
    hosted = sorted(set(current_app.config["HMS_SERVICES"]) - {"gateway"})
    checks: dict[str, Any] = {}
    try:
        seen = {svc["name"]: svc for svc in discover(bus_of(current_app), 0.5)}
    except BusError as exc:
        return {"status": "unavailable", "checks": {"bus": f"failing: {exc}"}}, 503
    missing = [name for name in hosted if name not in seen]
    checks["bus"] = "ok" if not missing else f"failing: no answer from {', '.join(missing)}"
    for name in hosted:  # a service's health fails when its database does not answer
        health = seen.get(name, {}).get("health", {"status": "no answer"})
        checks[name] = "ok" if health.get("status") == "ok" else f"failing: {health.get('error', health.get('status'))}"
    # An open bank breaker does not make the process unready: claims are still taken, payments wait.
    checks["breakers"] = {f"{n}.{b}": st for n, svc in seen.items() for b, st in svc.get("breakers", {}).items()}
    ok = not missing and all(checks[name] == "ok" for name in hosted)
    return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
