"""auth: the development identity provider (signing key, JWKS, `hms auth token`)."""

from __future__ import annotations

import re
import secrets

import click
from flask import Blueprint, Flask, abort, current_app, jsonify, make_response, redirect, render_template, request
from flask.cli import AppGroup
from flask.typing import ResponseReturnValue

from hms.bus.registry import ServiceInfo
from hms.contracts.vocabulary import ROLES
from hms.runtime import mesh_of

from .keys import IdentityProvider

VERSION = "0.1.0"
bp = Blueprint("auth", __name__, template_folder="templates")


@bp.get("/.well-known/jwks.json")
def jwks() -> ResponseReturnValue:
    """The public keys tokens are checked against."""
    provider: IdentityProvider = current_app.extensions["hms.auth"]
    response = jsonify(provider.read_jwks())
    response.cache_control.max_age = 60
    return response


DEMO_IDENTITIES = [
    ("diego", "citizen", "Diego Ramos, citizen"),
    ("rosa", "citizen", "Rosa Lind, citizen"),
    ("casey", "caseworker", "Casey, caseworker"),
    ("ann", "auditor", "Ann, auditor"),
    ("root", "admin", "Root, administrator"),
]
SESSION_COOKIE, CSRF_COOKIE = "hms_token", "hms_csrf"
SAME_SITE_PATH = re.compile(r"/(?![/\\])[^\s\\\x00-\x1f\x7f]*")
HOMES = {"citizen": "/", "caseworker": "/caseworker", "auditor": "/audit", "admin": "/caseworker"}


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> ResponseReturnValue:
    """Demo mode only: pick a demo identity and get a session (a signed token in an HttpOnly cookie)."""
    if not current_app.config["HMS_DEMO"]:
        abort(404)
    csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    next_url = request.values.get("next", "")
    if not SAME_SITE_PATH.fullmatch(next_url):
        # Only a path of this site: browsers drop tabs and newlines and read a backslash as "/", so
        # "/<TAB>/evil.example" and "/<BACKSLASH>evil.example" lead off-site as surely as "//evil.example".
        next_url = ""
    if request.method == "POST":
        if not secrets.compare_digest(csrf, request.form.get("csrf", "")) or not request.cookies.get(CSRF_COOKIE):
            abort(403)
        choice = request.form.get("identity", "")
        sub, _, role = choice.partition(":")
        if (sub, role) not in {(s, r) for s, r, _ in DEMO_IDENTITIES}:
            abort(400)
        provider: IdentityProvider = current_app.extensions["hms.auth"]
        response = redirect(next_url or HOMES[role], code=303)
        response.set_cookie(
            SESSION_COOKIE,
            provider.issue(sub, role, ttl=8 * 3600),
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
            max_age=8 * 3600,
        )
        return response
    html = render_template("signin.html", identities=DEMO_IDENTITIES, csrf=csrf, next=next_url, person=None, demo=True)
    response = make_response(html)
    response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="Strict", secure=request.is_secure)
    return response


@click.group("auth", cls=AppGroup)
def auth_cli() -> None:
    """The development identity provider."""


@auth_cli.command("token")
@click.option("--role", required=True, type=click.Choice(ROLES), help="citizen, caseworker, auditor or admin")
@click.option("--sub", required=True, help="the subject: an opaque citizen or staff id")
@click.option("--ttl", default=None, type=click.IntRange(60, 86400), help="lifetime in seconds")
def token(role: str, sub: str, ttl: int | None) -> None:
    """Issue a signed JWT for SUB with ROLE."""
    provider: IdentityProvider = current_app.extensions["hms.auth"]
    try:
        click.echo(provider.issue(sub, role, ttl=ttl))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def init_app(app: Flask) -> IdentityProvider:
    """Create the identity provider, its JWKS route and its CLI."""
    cfg = app.config
    provider = IdentityProvider(
        cfg["HMS_JWT_PRIVATE_KEY_FILE"],
        cfg["HMS_DEV_JWKS_FILE"],
        cfg["HMS_JWT_ISSUER"],
        cfg["HMS_JWT_AUDIENCE"],
        cfg["HMS_JWT_TTL_S"],
    )
    provider.ensure_keys()
    app.extensions["hms.auth"] = provider
    app.register_blueprint(bp)
    app.cli.add_command(auth_cli)
    mesh_of(app).register(
        ServiceInfo(
            name="auth",
            version=VERSION,
            description="Development identity provider",
            health=lambda: {"status": "ok", "kid": provider.kid},
        )
    )
    return provider
