"""The web UI: server-rendered pages for citizens, caseworkers and auditors, over the same bus as the API."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import ValidationError

from hms.bus import BusError, BusTimeout, NoResponders, ReplyError, bus_of
from hms.bus.registry import discover
from hms.contracts.vocabulary import BAD_CHECKSUM, CLAIM_STATUSES

from . import operations
from .api import CLAIM_IN, DEPOSIT_IN, ask, reissue, submit_claim
from .charts import histogram_svg, percentiles_svg
from .problems import Problem, flatten, problem_of
from .security import Identity, caller
from .signin import HOME, csrf_ok, csrf_token, sign_in_offered

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static", static_url_path="/static/hms")
STAFF = ("caseworker", "admin", "auditor")
# One voice for form errors: what to do, in the words of the form, whatever the validator said.
FIELD_HELP = {
    "name": "Enter your full name.",
    "email": "Enter your e-mail address, like name@example.org.",
    "ssnLast4": "Enter the last 4 digits of your Social Security number.",
    "employer": "Enter the name of your last employer.",
    "separationReason": "Choose why your job ended.",
    "weeksWorked": "Enter the number of weeks you worked, a whole number from 0 to 520.",
    "baseWages": "Enter your wages in dollars, a number from 0 to 10,000,000.",
    "routingNumber": "Enter the 9-digit routing number printed at the bottom left of a check.",
    "accountNumber": "Enter your account number: 4 to 17 digits, no spaces.",
    "accountType": "Choose checking or savings.",
}
BAD_ROUTING = "That routing number does not exist (its check digit is wrong): check the 9 digits on your check."
REASONS = {
    "laid_off": "Laid off",
    "reduced_hours": "Hours reduced",
    "fired_other": "Let go (not misconduct)",
    "quit": "Quit",
    "fired_misconduct": "Fired for misconduct",
}


def who(*roles: str) -> Identity:
    """The signed-in person, if they have one of `roles`; otherwise off to sign in, or 403."""
    try:
        person = caller()
    except Problem:
        person = None
    if person is None:
        if sign_in_offered():
            abort(redirect("/signin?" + urlencode({"next": request.path})))
        abort(401)
    if person.role not in roles:
        abort(403)
    return person


def form_errors(exc: ValidationError) -> dict[str, str]:
    """A form's validation errors by field, in the form's own words (one voice, whatever the validator said)."""
    errors: dict[str, str] = {}
    for e in flatten(exc.messages):
        name = e["field"].split(".")[-1]
        errors.setdefault(name, BAD_ROUTING if e["message"] == BAD_CHECKSUM else FIELD_HELP.get(name, e["message"]))
    return errors


def page(template: str, **context: Any) -> Response:
    """Render a page, with the session's CSRF token for its forms."""
    return Response(render_template(template, csrf=csrf_token(), **context))


def form_again(response: Response, errors: dict[str, str], notice: Problem | None) -> Response:
    """A form page sent back unfiled: with the `notice`'s status and headers (refused, or not answered), else 422
    for the fields' `errors`."""
    if notice:
        response.status_code = notice.status
        response.headers.update(notice.headers)
    elif errors:
        response.status_code = 422
    return response


@bp.get("/")
def citizen() -> ResponseReturnValue:
    """The citizen's home: their claims and the form to file one."""
    try:
        person = caller()
    except Problem:
        person = None
    if person is None:
        return page("welcome.html")
    if person.role != "citizen":
        return redirect(url_for(HOME[person.role]))
    return home(person)


def home(
    person: Identity, form: Any = None, errors: dict[str, str] | None = None, notice: Problem | None = None
) -> Response:
    """The citizen's home page: their latest claims (or, when svc cannot answer now, a line saying so: the form is
    still offered, and filing then says what is wrong) and the claim form as `form` had it — with the fields'
    `errors` (422), or the `notice` of why it was not filed (its status and headers)."""
    try:
        claims = ask("svc.claims.list", {"citizen": person.sub, "page": 1, "pageSize": 50})["items"]
    except BusError:
        claims = None
    errors = errors or {}
    response = page(
        "citizen.html", person=person, claims=claims, reasons=REASONS, form=form or {}, errors=errors, notice=notice
    )
    return form_again(response, errors, notice)


@bp.post("/claims/new")
def file_claim() -> ResponseReturnValue:
    """File a claim from the form (works without JavaScript)."""
    person = who("citizen")
    csrf_ok()
    f = request.form
    body: dict[str, Any] = {
        "claimant": {"name": f.get("name", ""), "ssnLast4": f.get("ssnLast4", ""), "email": f.get("email", "")},
        "employer": f.get("employer", ""),
        "separationReason": f.get("separationReason", ""),
        "weeksWorked": f.get("weeksWorked", ""),
        "baseWages": f.get("baseWages", ""),
        "directDeposit": {
            "routingNumber": f.get("routingNumber", ""),
            "accountNumber": f.get("accountNumber", ""),
            "accountType": f.get("accountType", ""),
        },
    }
    try:
        weeks = body["weeksWorked"]
        body["weeksWorked"] = int(weeks) if str(weeks).strip().lstrip("-").isdigit() else weeks
        checked = CLAIM_IN.load(body)
    except ValidationError as exc:
        return home(person, f, form_errors(exc))
    try:
        claim = submit_claim(person.sub, checked, f.get("idempotencyKey") or None)
    except (Problem, ReplyError, NoResponders, BusTimeout) as exc:
        # Refused or not answered (the rate limit, a service down or slow): the form again as filled in, with the
        # reason and its Idempotency-Key, so sending it again files the claim at most once.
        return home(person, f, notice=problem_of(exc))
    return redirect(url_for("web.claim", claim_id=claim["id"]), code=303)


@bp.get("/my/claims/<claim_id>")
def claim(claim_id: str) -> ResponseReturnValue:
    """One of the citizen's claims: status, plain-language reasons, timeline (updated live)."""
    person = who("citizen", *STAFF)
    if person.role != "citizen":
        return redirect(url_for("web.case", claim_id=claim_id))
    found = get_claim(claim_id, person.sub)
    return page("claim.html", person=person, claim=found, reasons=REASONS, errors={}, form={}, again=again(found))


def again(claim: dict[str, Any]) -> bool:
    """Whether a returned claim's payment is on its way again (the citizen gave other bank details already)."""
    if claim["status"] != "returned":
        return False
    try:
        return ask("ach.payments.get", {"claimId": claim["id"]})["state"] != "returned"  # type: ignore[no-any-return]
    except BusError:
        return False


@bp.post("/my/claims/<claim_id>/direct-deposit")
def new_direct_deposit(claim_id: str) -> ResponseReturnValue:
    """Other bank details for a payment the bank sent back (works without JavaScript)."""
    person = who("citizen")
    csrf_ok()
    found = get_claim(claim_id, person.sub)
    f = request.form
    body = {k: f.get(k, "") for k in ("routingNumber", "accountNumber", "accountType")}
    errors: dict[str, str] = {}
    notice: Problem | None = None
    try:
        reissue(person.sub, found["id"], DEPOSIT_IN.load(body))
    except ValidationError as exc:
        errors = form_errors(exc)
    except ReplyError as exc:
        if exc.status in (404, 409, 422):
            errors["accountNumber"] = exc.detail
        else:
            notice = problem_of(exc)
    except (NoResponders, BusTimeout) as exc:  # ach down or slow: the form again as typed, with the reason
        notice = problem_of(exc)
    if errors or notice:
        response = page(
            "claim.html", person=person, claim=found, reasons=REASONS, errors=errors, form=f, again=False, notice=notice
        )
        return form_again(response, errors, notice)
    return redirect(url_for("web.claim", claim_id=found["id"]), code=303)


def get_claim(claim_id: str, citizen: str | None) -> dict[str, Any]:
    """A claim from svc (a citizen's own only, when `citizen` is given); 404 when there is none."""
    try:
        return ask("svc.claims.get", {"claimId": claim_id[:64], "citizen": citizen})  # type: ignore[no-any-return]
    except ReplyError as exc:
        abort(exc.status)


@bp.get("/caseworker/claims/<claim_id>")
def case(claim_id: str) -> ResponseReturnValue:
    """The whole case for staff: claimant, job, decision and reasons, timeline, payment and bank reference."""
    person = who(*STAFF)
    found = get_claim(claim_id, None)
    payment: dict[str, Any] | None = None
    unavailable = None
    try:
        payment = ask("ach.payments.get", {"claimId": found["id"]})
    except ReplyError as exc:
        if exc.status != 404:
            unavailable = exc.detail
    except BusError as exc:  # ach not running or not answering: the rest of the case still shows
        unavailable = str(exc)
    return page("case.html", person=person, claim=found, payment=payment, unavailable=unavailable, reasons=REASONS)


@bp.get("/caseworker")
def caseworker() -> ResponseReturnValue:
    """Claims, the mesh registry with breaker states, and dead letters to replay."""
    person = who("caseworker", "admin")
    page_no = max(1, request.args.get("page", 1, type=int) or 1)
    status = request.args.get("status") or None
    if status not in (None, *CLAIM_STATUSES):
        status = None
    claims = ask("svc.claims.list", {"citizen": None, "page": page_no, "pageSize": 25, "status": status})
    bus = bus_of(current_app)
    services = discover(bus)  # once: the registry table and the dead letters both come from it
    dead, silent = operations.dead_letters(bus, services, current_app.config["HMS_REQUEST_TIMEOUT_S"])
    return page(
        "caseworker.html",
        person=person,
        claims=claims,
        status=status,
        statuses=CLAIM_STATUSES,
        services=services,
        dead=dead,
        silent=silent,
        message=request.args.get("message"),
    )


@bp.post("/caseworker/dead-letters/<ref>/replay")
def replay(ref: str) -> ResponseReturnValue:
    """Replay one dead letter and say how it went."""
    who("caseworker", "admin")
    csrf_ok()
    try:
        operations.parse_ref(ref)
    except ValueError:
        abort(404)
    try:
        operations.replay(bus_of(current_app), ref, current_app.config["HMS_REQUEST_TIMEOUT_S"])
        message = f"Replayed {ref}: handled."
    except ReplyError as exc:
        if exc.status == 404:
            abort(404)
        message = f"Replay of {ref} failed again: {exc.detail}"
    except BusError as exc:
        message = f"Replay of {ref} failed: {exc}"
    return redirect(url_for("web.caseworker", message=message), code=303)


@bp.app_template_filter("ref")
def reference(claim_id: str) -> str:
    """A claim's reference number as people read it out: 12 hex digits of its id in groups of four."""
    digits = claim_id.replace("-", "").upper()[:12]
    return "-".join(digits[i : i + 4] for i in range(0, len(digits), 4))


@bp.get("/favicon.ico")
def favicon() -> ResponseReturnValue:
    """The agency's icon (browsers ask for it on every page)."""
    return bp.send_static_file("favicon.svg")


@bp.get("/audit")
def audit() -> ResponseReturnValue:
    """Payout times: a histogram and p50/p99 by day, drawn here as SVG; CSV download."""
    person = who("auditor")
    report = ask("metrics.payouts.report", {})
    return page(
        "audit.html",
        person=person,
        report=report,
        histogram=histogram_svg(report["histogram"]),
        by_day=percentiles_svg(report["byDay"]),
    )
