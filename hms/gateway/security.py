"""JWT verification at the gateway: JWKS file, pinned algorithms, required claims, roles."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from flask import current_app, g, request

from hms.bus.tokens import KeySet
from hms.contracts.vocabulary import ROLES, USER_TOKEN_TYPE

from .problems import Problem

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Identity:
    """Who is calling: the token's subject and role."""

    sub: str
    role: str


def unauthorized(detail: str) -> Problem:
    """A 401 problem with the bearer challenge."""
    return Problem(
        401, "Unauthorized", detail, "Authorization", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


class JwksVerifier:
    """Checks user tokens against the keys of a JWKS file, re-read when the file changes."""

    def __init__(self, jwks_file: str, issuer: str, audience: str, *, recheck_s: float = 1.0) -> None:
        self.keys, self.issuer, self.audience = KeySet(jwks_file, recheck_s=recheck_s), issuer, audience

    def verify(self, token: str) -> Identity:
        """The identity in a valid user token; raises a 401 Problem naming what is wrong."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise unauthorized("the bearer token is not a JWT") from None
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise unauthorized(f"token algorithm {alg!r} is not accepted")
        if not isinstance(typ, str) or typ.lower() != USER_TOKEN_TYPE:
            raise unauthorized("not a user access token (typ must be at+jwt)")
        if not isinstance(kid, str):
            raise unauthorized("token key id (kid) is not trusted")
        key = self.keys.get(kid)
        if key is None:
            raise unauthorized("token key id (kid) is not trusted")
        if key.algorithm_name != alg:
            raise unauthorized("token algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
                leeway=10,
            )
        except jwt.ExpiredSignatureError:
            raise unauthorized("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized("token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise unauthorized("token audience (aud) is wrong") from None
        except jwt.InvalidIssuerError:
            raise unauthorized("token issuer (iss) is wrong") from None
        except jwt.MissingRequiredClaimError as exc:
            raise unauthorized(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise unauthorized("token signature is invalid") from None
        except jwt.InvalidTokenError as exc:
            raise unauthorized(f"token is invalid: {exc}") from None
        sub, role = claims.get("sub"), claims.get("role")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise unauthorized("token subject (sub) must be 1 to 128 characters")
        if role not in ROLES:
            raise unauthorized(f"token role must be one of {', '.join(ROLES)}")
        return Identity(sub, role)


def identity() -> Identity:
    """The caller of this request (after `requires`)."""
    return g.hms_identity  # type: ignore[no-any-return]


SESSION_COOKIE = "hms_token"


def caller() -> Identity | None:
    """The verified caller: the bearer token, else the web UI's session cookie; None when there is neither.

    A present but invalid token raises a 401 Problem.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if header and (scheme.lower() != "bearer" or not token.strip()):
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    token = token.strip() or request.cookies.get(SESSION_COOKIE, "")
    if not token:
        return None
    return current_app.extensions["hms.verifier"].verify(token)  # type: ignore[no-any-return]


def requires(*roles: str) -> Callable[[F], F]:
    """Allow the view only to valid tokens with one of `roles` (401 without a token, 403 for other roles)."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            who = caller()
            if who is None:
                raise unauthorized("an Authorization: Bearer token is required")
            if who.role not in roles:
                raise Problem(403, "Forbidden", f"role {who.role!r} may not do this; needs {' or '.join(roles)}")
            g.hms_identity = who
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
