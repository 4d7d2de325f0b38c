"""Browser sign-in and the web session.

Outside demo mode people sign in at the agency's OpenID Provider: the authorization code flow with PKCE (S256),
`state` and `nonce`, done by Authlib; the client authenticates with a secret (client_secret_basic) or a private key
(private_key_jwt, as Login.gov requires). In demo mode (HMS_DEMO=true, no provider configured) a page lets anyone
pick a demo identity. Either way the session is Flask's signed cookie `hms_session`: who signed in (subject and
role), a CSRF token for the pages' forms, and the ID token to end the session at the provider.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, session, url_for
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from hms.config import ConfigError

from .problems import Problem
from .security import granted_role

bp = Blueprint("signin", __name__, template_folder="templates")
DEMO_IDENTITIES = [
    ("diego", "citizen", "Diego Ramos, citizen"),
    ("rosa", "citizen", "Rosa Lind, citizen"),
    ("casey", "caseworker", "Casey, caseworker"),
    ("ann", "auditor", "Ann, auditor"),
    ("root", "admin", "Root, administrator"),
]
HOME = {"citizen": "web.citizen", "caseworker": "web.caseworker", "auditor": "web.audit", "admin": "web.caseworker"}
# Only a path of this site: browsers drop tabs and newlines and read a backslash as "/", so "/<TAB>/evil.example"
# and "/<BACKSLASH>evil.example" lead off-site as surely as "//evil.example".
SAME_SITE_PATH = re.compile(r"/(?![/\\])[^\s\\\x00-\x1f\x7f]*")
SESSION_HOURS = 8


class SessionCookies(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, Secure whenever the request came over https (directly or, with
    HMS_TRUSTED_PROXIES, through a TLS-terminating proxy)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def init_app(app: Flask) -> None:
    """Sessions (their secret shared by every gateway of the mesh), the sign-in routes and the OIDC client."""
    c = app.config
    app.secret_key = c["HMS_SECRET_KEY"] or _instance_secret(Path(c["HMS_INSTANCE_PATH"]) / "session-secret")
    app.session_interface = SessionCookies()
    app.config.update(
        SESSION_COOKIE_NAME="hms_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",  # sent on the provider's redirect back (top-level GET), not on cross-site posts
        PERMANENT_SESSION_LIFETIME=SESSION_HOURS * 3600,
    )
    if c["HMS_OIDC_ISSUER"]:
        app.extensions["hms.oidc"] = _register(OAuth(app), c)
    app.context_processor(lambda: {"can_sign_in": sign_in_offered()})
    app.register_blueprint(bp)


def sign_in_offered() -> bool:
    """Whether browsers can sign in here: at the identity provider, or with the demo picker."""
    return bool(current_app.config["HMS_OIDC_ISSUER"] or current_app.config["HMS_DEMO"])


def _instance_secret(path: Path) -> str:
    """A random secret kept in the instance folder (made on first use, readable only by its owner)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _register(oauth: OAuth, c: Any) -> Any:
    """The provider as an Authlib client: its discovery document, PKCE S256, and the client authentication."""
    kwargs: dict[str, Any] = {"scope": " ".join(c["HMS_OIDC_SCOPES"]), "code_challenge_method": "S256"}
    secret: str = c["HMS_OIDC_CLIENT_SECRET"]
    methods = None
    if c["HMS_OIDC_CLIENT_KEY_FILE"]:
        pem = Path(c["HMS_OIDC_CLIENT_KEY_FILE"]).read_bytes()
        try:
            kid = RSAKey.import_key(pem).thumbprint()
        except ValueError:
            raise ConfigError("HMS_OIDC_CLIENT_KEY_FILE: not an RSA private key in PEM") from None
        secret = pem.decode()
        kwargs["token_endpoint_auth_method"] = "private_key_jwt"
        # The assertion's aud is the token endpoint (Login.gov wants it); its kid, the key's thumbprint.
        methods = [PrivateKeyJWT(headers={"kid": kid})]
    else:
        kwargs["token_endpoint_auth_method"] = "client_secret_basic"
    return oauth.register(
        "idp",
        client_id=c["HMS_OIDC_CLIENT_ID"],
        client_secret=secret,
        server_metadata_url=c["HMS_OIDC_ISSUER"].rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs=kwargs,
        client_auth_methods=methods,
    )


def public_jwks(pem: bytes) -> dict[str, Any]:
    """The JWKS to register with the provider for a private_key_jwt client key (PEM): its public part."""
    key = RSAKey.import_key(pem)
    return {"keys": [{**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "RS256", "use": "sig"}]}


# -- the session --------------------------------------------------------------------------------------------------
def begin_session(sub: str, role: str, **extra: Any) -> None:
    """A new session for `sub`: nothing carried over from before sign-in (no session fixation), a new CSRF token."""
    session.clear()
    session.permanent = True
    session.update(who={"sub": sub, "role": role}, csrf=secrets.token_urlsafe(24), **extra)


def csrf_token() -> str:
    """The token the page's forms send back: kept in the session (one is made for a visitor not signed in)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def csrf_ok() -> None:
    """Refuse a form post whose token is not the one its session was given."""
    sent = request.form.get("csrf", "")
    if not isinstance(session.get("csrf"), str) or not secrets.compare_digest(session["csrf"], sent):
        raise Problem(403, "Forbidden", "the form is stale or forged; reload the page and try again", "csrf")


def safe_next(value: str | None) -> str:
    """`value` if it is a path of this site, else ''."""
    return value if value and SAME_SITE_PATH.fullmatch(value) else ""


# -- the routes ---------------------------------------------------------------------------------------------------
def _oidc() -> Any:
    return current_app.extensions.get("hms.oidc")


def _unreachable(exc: Exception) -> Problem:
    return Problem(503, "Service unavailable", f"the identity provider cannot be reached ({type(exc).__name__})")


@bp.get("/signin")
def signin() -> ResponseReturnValue:
    """Off to the identity provider; in demo mode, the page to pick a demo identity."""
    next_url = safe_next(request.args.get("next"))
    oidc = _oidc()
    if oidc is not None:
        session["next"] = next_url
        acr = current_app.config["HMS_OIDC_ACR_VALUES"]
        try:
            return oidc.authorize_redirect(  # type: ignore[no-any-return]
                url_for("signin.callback", _external=True), **({"acr_values": " ".join(acr)} if acr else {})
            )
        except (OSError, ValueError) as exc:  # discovery document unreachable or not JSON
            raise _unreachable(exc) from None
    if not current_app.config["HMS_DEMO"]:
        abort(404)
    return render_template("signin.html", identities=DEMO_IDENTITIES, csrf=csrf_token(), next=next_url, person=None)


@bp.post("/signin")
def demo_signin() -> ResponseReturnValue:
    """Demo mode only: sign in as the chosen demo identity."""
    if not current_app.config["HMS_DEMO"] or _oidc() is not None:
        abort(404)
    csrf_ok()
    sub, _, role = request.form.get("identity", "").partition(":")
    if (sub, role) not in {(s, r) for s, r, _ in DEMO_IDENTITIES}:
        raise Problem(400, "Bad request", "choose one of the demo identities", "identity")
    begin_session(sub, role)
    return redirect(safe_next(request.form.get("next")) or url_for(HOME[role]), code=303)


@bp.get("/signin/callback")
def callback() -> ResponseReturnValue:
    """The provider sends the browser back here with a code: exchange it (PKCE verifier, client authentication),
    check the ID token (signature, issuer, audience, expiry, nonce) and the state, then start the session."""
    oidc = _oidc()
    if oidc is None:
        abort(404)
    next_url = safe_next(session.get("next"))
    try:
        token = oidc.authorize_access_token()
        if "userinfo" not in token:
            raise Problem(401, "Unauthorized", "the provider sent no ID token")
        claims = dict(token["userinfo"])  # the ID token's claims, checked
        if oidc.load_server_metadata().get("userinfo_endpoint"):
            info = oidc.userinfo(token=token)
            if info.get("sub") != claims.get("sub"):
                raise Problem(401, "Unauthorized", "the provider's userinfo is about someone else")
            claims.update(info)
    except (AuthlibBaseError, JoseError) as exc:  # an error from the provider, a bad state, code or ID token
        raise Problem(401, "Unauthorized", f"sign-in failed: {exc.description or exc.error}") from None
    except (OSError, ValueError) as exc:
        raise _unreachable(exc) from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not 0 < len(sub) <= 128:
        raise Problem(401, "Unauthorized", "the provider's subject (sub) must be 1 to 128 characters")
    wanted = current_app.config["HMS_OIDC_ACR_VALUES"]
    if wanted and claims.get("acr") not in wanted:
        raise Problem(
            401,
            "Unauthorized",
            f"sign-in at assurance level {claims.get('acr')!r}; this service needs {' or '.join(wanted)}",
        )
    verifier = current_app.extensions["hms.verifier"]
    role = granted_role(claims, verifier.roles_claim, verifier.role_map) or current_app.config["HMS_OIDC_DEFAULT_ROLE"]
    if not role:
        raise Problem(403, "Forbidden", "your account has no role in this service; ask the agency for access")
    begin_session(sub, role, id_token=token.get("id_token"))
    return redirect(next_url or url_for(HOME[role]), code=303)


@bp.post("/signout")
def signout() -> ResponseReturnValue:
    """End the session (a form post with the page's CSRF token, so another site cannot sign a person out); at the
    provider too, where it has an end_session_endpoint."""
    csrf_ok()
    id_token = session.get("id_token")
    session.clear()
    oidc = _oidc()
    if oidc is not None and id_token:
        try:
            if oidc.load_server_metadata().get("end_session_endpoint"):
                url = oidc.create_logout_url(
                    post_logout_redirect_uri=url_for("web.citizen", _external=True),
                    id_token_hint=id_token,
                    client_id=current_app.config["HMS_OIDC_CLIENT_ID"],
                )["url"]
                return redirect(url, code=303)
        except (OSError, ValueError):
            pass  # signed out here; the provider's session ends when it does
    return redirect("/", code=303)
