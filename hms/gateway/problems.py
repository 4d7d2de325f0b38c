"""One error shape for the whole API: application/problem+json (RFC 9457)."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, json, render_template, request
from werkzeug.exceptions import HTTPException

from hms.bus import BusTimeout, ContractError, NoResponders, ReplyError

PROBLEM_BASE = "https://hms.example/problems/"
MEDIA_TYPE = "application/problem+json"
SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
    504: "timeout",
}


class Problem(Exception):
    """An error the gateway answers with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        field: str | None = None,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.field = status, title, detail or title, field
        self.errors, self.headers = errors or [], headers or {}


def wants_html() -> bool:
    """Whether the client is a browser asking for a page (API clients and scripts get problem+json)."""
    accepted = request.accept_mimetypes
    return accepted.best_match(["application/json", MEDIA_TYPE, "text/html"]) == "text/html"


def problem_response(p: Problem) -> Response:
    """Render a problem as an HTTP response: a page for a browser, problem+json for everyone else."""
    if wants_html():
        html = render_template("error.html", problem=p, person=None, csrf="")
        return Response(html, status=p.status, mimetype="text/html", headers=p.headers)  # CSP: _secure_headers
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + SLUGS.get(p.status, "error"),
        "title": p.title,
        "status": p.status,
        "detail": p.detail,
    }
    if p.field:
        body["field"] = p.field
    if p.errors:
        body["errors"] = p.errors
    return Response(json.dumps(body), status=p.status, mimetype=MEDIA_TYPE, headers=p.headers)


def flatten(messages: Any, prefix: str = "") -> list[dict[str, str]]:
    """marshmallow/webargs messages as a flat list of {field, message}."""
    out: list[dict[str, str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key in ("json", "query", "headers", "view_args", "_schema") and not prefix:
                out += flatten(value, "" if key in ("json", "_schema") else "")
            else:
                out += flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            out += [{"field": prefix, "message": m} for m in messages]
        else:
            for m in messages:
                out += flatten(m, prefix)
    else:
        out.append({"field": prefix, "message": str(messages)})
    return out


def from_http_exception(error: HTTPException) -> Problem:
    """An HTTP error (also webargs' 422 and 400) as a problem naming the failing fields."""
    status = error.code or 500
    data = getattr(error, "data", None) or {}
    errors = flatten(data.get("messages", {})) if data.get("messages") else []
    if status == 422 and errors:
        first = errors[0]
        detail = "; ".join(f"{e['field'] or '(body)'}: {e['message']}" for e in errors)
        return Problem(422, "Invalid request", detail, first["field"] or None, errors)
    if status == 400 and errors:
        return Problem(400, "Malformed request", errors[0]["message"], errors[0]["field"] or None, errors)
    title = error.name if status != 413 else "Request body too large"
    # Keep what the error says in headers (Allow on 405, Retry-After on 429), not its content type.
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return Problem(status, title, error.description or title, headers=headers)


def problem_of(error: Problem | ReplyError | NoResponders | BusTimeout) -> Problem:
    """What the gateway answers for a service's refusal, nothing serving a request, or no answer in time."""
    if isinstance(error, Problem):
        return error
    if isinstance(error, ReplyError):
        return Problem(error.status, error.title, error.detail, error.field)
    if isinstance(error, NoResponders):
        detail = f"nothing serves {error.subject} right now"
        return Problem(503, "Service unavailable", detail, headers={"Retry-After": "5"})
    return Problem(504, "Service timeout", str(error))


def init_app(app: Flask) -> None:
    """Map every error to problem+json: HTTP errors, bus errors and anything unexpected."""

    @app.errorhandler(Problem)
    def _problem(p: Problem) -> Response:
        return problem_response(p)

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        return problem_response(from_http_exception(error))

    @app.errorhandler(ReplyError)
    @app.errorhandler(NoResponders)
    @app.errorhandler(BusTimeout)
    def _bus(error: ReplyError | NoResponders | BusTimeout) -> Response:
        return problem_response(problem_of(error))

    @app.errorhandler(ContractError)
    def _contract(error: ContractError) -> Response:
        return problem_response(Problem(422, "Invalid request", str(error), error.field or None))

    @app.errorhandler(RecursionError)
    def _too_deep(error: RecursionError) -> Response:
        # json.loads gives up on a document nested deeper than the interpreter's recursion limit
        return problem_response(Problem(400, "Bad request", "the JSON body is nested too deeply"))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        app.logger.exception("unhandled error")
        return problem_response(Problem(500, "Internal error", "an unexpected error occurred; it has been logged"))
