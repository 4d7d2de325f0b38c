"""auth: the development identity provider (signing key, JWKS, `hms auth token`)."""

from __future__ import annotations

import click
from flask import Blueprint, Flask, current_app, jsonify
from flask.cli import AppGroup
from flask.typing import ResponseReturnValue

from hms.bus.registry import ServiceInfo
from hms.contracts.vocabulary import ROLES
from hms.runtime import mesh_of

from .keys import IdentityProvider

VERSION = "0.1.0"
bp = Blueprint("auth", __name__)


@bp.get("/.well-known/jwks.json")
def jwks() -> ResponseReturnValue:
    """The public keys tokens are checked against."""
    provider: IdentityProvider = current_app.extensions["hms.auth"]
    response = jsonify(provider.read_jwks())
    response.cache_control.max_age = 60
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
