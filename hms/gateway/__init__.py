"""gateway: the HTTP API and the admin CLI; reaches the services only through the bus."""

from __future__ import annotations

import http
from typing import Any

from flask import Flask, Response, g, request
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.middleware.proxy_fix import ProxyFix

from hms.bus import bus_of, telemetry
from hms.bus.tokens import KeySet
from hms.bus.tracing import bound, child_of, trace_id
from hms.contracts.asyncapi import asyncapi

from . import api, cli, problems, signin, web
from .ratelimit import RateLimiter
from .schemas import Problem
from .security import JwksVerifier, RemoteKeys


class ProblemApi(Api):  # type: ignore[misc]
    """flask-smorest's Api, answering and documenting every error as problem+json."""

    ERROR_SCHEMA = Problem

    def handle_http_exception(self, error: Any) -> Any:
        return problems.problem_response(problems.from_http_exception(error))

    def _register_responses(self) -> None:
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if status >= 400:
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, problems.MEDIA_TYPE)
            self.spec.components.response(status.name, response, lazy=True)
        response = {"description": "Error (RFC 9457 problem details)", "schema": self.ERROR_SCHEMA}
        prepare_response(response, self.spec, problems.MEDIA_TYPE)
        self.spec.components.response("DEFAULT_ERROR", response, lazy=True)


def observe(app: Flask) -> None:
    """Serve this process's Prometheus metrics at /metrics: what its bus counts, the outbox backlog and breakers
    of the services it hosts, and the payout times where it hosts metrics."""
    bus = bus_of(app)
    t: telemetry.Telemetry = bus.telemetry  # type: ignore[attr-defined]
    if "metrics" in app.config["HMS_SERVICES"]:
        t.add_collector(lambda: telemetry.payout_histogram(bus.request("metrics.payouts.report", {}, 10)))

    @app.get("/asyncapi.json")
    def asyncapi_json() -> Any:
        """The AsyncAPI 3 document of the mesh's events and request subjects."""
        return asyncapi()

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus exposition of this process."""
        return Response(generate_latest(t.registry), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    """Register the API, its OpenAPI document, error handling, JWT checking and the admin CLI."""
    app.config.setdefault("API_TITLE", "HMS payout mesh")
    app.config.setdefault("API_VERSION", "1")
    app.config.setdefault("OPENAPI_VERSION", "3.0.3")
    app.config.setdefault("OPENAPI_URL_PREFIX", "/")
    app.config.setdefault("OPENAPI_JSON_PATH", "openapi.json")
    problems.init_app(app)
    smorest = ProblemApi(app, spec_kwargs={"info": {"description": "Unemployment claims paid fast and exactly once."}})
    smorest.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    for bp in (api.claims, api.audit, api.mesh, api.health):
        smorest.register_blueprint(bp)
    c = app.config
    keys = (
        RemoteKeys(c["HMS_JWT_JWKS_URL"], c["HMS_JWT_ISSUER"])
        if c["HMS_JWT_JWKS_URL"]
        else KeySet(c["HMS_JWT_JWKS_FILE"])
    )
    app.extensions["hms.verifier"] = JwksVerifier(
        keys,
        c["HMS_JWT_ISSUER"],
        c["HMS_JWT_AUDIENCE"],
        types=tuple(c["HMS_JWT_TYPES"]),
        roles_claim=c["HMS_JWT_ROLES_CLAIM"],
        role_map=c["HMS_JWT_ROLE_MAP"],
    )
    app.extensions["hms.ratelimit"] = RateLimiter(bus_of(app), app.config["HMS_CLAIMS_PER_MINUTE"])
    signin.init_app(app)
    app.register_blueprint(web.bp)
    observe(app)

    @app.before_request
    def _trace() -> None:
        # Continue the caller's W3C trace (or start one); it rides on every event of the claim.
        g.traceparent = child_of(request.headers.get("traceparent"))
        g.trace_scope = bound(trace_id=trace_id(g.traceparent))
        g.trace_scope.__enter__()

    @app.teardown_request
    def _untrace(_exc: BaseException | None) -> None:
        scope = g.pop("trace_scope", None)
        if scope is not None:
            scope.__exit__(None, None, None)

    @app.after_request
    def _traceresponse(response: Any) -> Any:
        response.headers["traceresponse"] = g.get("traceparent", "")
        return response

    @app.after_request
    def _secure_headers(response: Any) -> Any:
        # Every page, the sign-in page included: no framing, no scripts or styles from elsewhere, no sniffing.
        if response.mimetype == "text/html":
            response.headers.setdefault(
                "Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
            )
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    proxies = app.config["HMS_TRUSTED_PROXIES"]
    if proxies:
        # Behind TLS-terminating proxies: the scheme and client address they forward are the request's own, so
        # session cookies get their Secure flag. Only as many hops as configured are believed.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)  # type: ignore[method-assign]

    cli.init_app(app)
