"""JWT verification at the gateway: JWKS file, pinned algorithms, required claims, roles."""

from __future__ import annotations

import functools
import json
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
from flask import current_app, g, request, session

from hms.bus.tokens import KeySet, Verified
from hms.contracts.vocabulary import ROLES, USER_TOKEN_TYPE

from .problems import Problem

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
PRECEDENCE = ("admin", "caseworker", "auditor", "citizen")  # of several roles, the first here
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


class RemoteKeys:
    """The keys of an identity provider's JWKS URL (PyJWT's PyJWKClient): cached for `lifespan` seconds, fetched
    again when a token names a key not in the cache (a rotation), at most once per `cooldown` seconds."""

    def __init__(self, url: str, issuer: str, *, lifespan: float = 300, cooldown: float = 5) -> None:
        self.url, self.issuer, self.lifespan, self.cooldown = url, issuer, lifespan, cooldown
        self._client: jwt.PyJWKClient | None = None

    def client(self) -> jwt.PyJWKClient:
        if self._client is None:
            url = self.url
            if url == "discover":  # jwks_uri from the issuer's discovery document, read on first use
                try:
                    url = discover_jwks_uri(self.issuer)
                except (OSError, ValueError, KeyError) as exc:
                    raise Problem(
                        503, "Service unavailable", f"the identity provider's discovery document: {exc}"
                    ) from None
            self._client = jwt.PyJWKClient(
                url, cache_jwk_set=True, lifespan=self.lifespan, timeout=5, cooldown_duration=self.cooldown
            )
        return self._client

    def get(self, kid: str) -> jwt.PyJWK | None:
        try:
            return self.client().get_signing_key(kid)
        except jwt.PyJWKClientError:
            return None


def discover_jwks_uri(issuer: str) -> str:
    """The `jwks_uri` of an OpenID Provider's discovery document."""
    with urllib.request.urlopen(issuer.rstrip("/") + "/.well-known/openid-configuration", timeout=5) as r:  # noqa: S310
        return str(json.load(r)["jwks_uri"])


def accepted_type(typ: str) -> str:
    """A header `typ` as compared: case-insensitive, with or without the `application/` prefix (RFC 8725)."""
    return typ.lower().removeprefix("application/")


class JwksVerifier:
    """Checks user tokens against a key set (a JWKS file, re-read when it changes, or an identity provider's JWKS
    URL); the header types, the claim that holds the roles and a map of the provider's role names are settings."""

    def __init__(
        self,
        keys: KeySet | RemoteKeys,
        issuer: str,
        audience: str,
        *,
        types: tuple[str, ...] = (USER_TOKEN_TYPE,),
        roles_claim: str = "role",
        role_map: dict[str, str] | None = None,
    ) -> None:
        self.keys, self.issuer, self.audience = keys, issuer, audience
        self.types = {accepted_type(t) for t in types}
        self.roles_claim, self.role_map = roles_claim.split("."), dict(role_map or {})
        self._verified = Verified()  # a citizen's token is checked once, not on every request it comes with

    def verify(self, token: str) -> Identity:
        """The identity in a valid user token; raises a 401 Problem naming what is wrong."""
        known = self._verified.get(token, self.keys)
        if known is not None:
            return known  # type: ignore[no-any-return]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise unauthorized("the bearer token is not a JWT") from None
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise unauthorized(f"token algorithm {alg!r} is not accepted")
        if not isinstance(typ, str) or accepted_type(typ) not in self.types:
            raise unauthorized(f"not a user access token (typ must be one of {', '.join(sorted(self.types))})")
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
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 128:
            raise unauthorized("token subject (sub) must be 1 to 128 characters")
        who = Identity(sub, self.role(claims))
        self._verified.put(token, who, float(claims["exp"]), kid, key)
        return who

    def role(self, claims: dict[str, Any]) -> str:
        """The hms role a token grants (see `granted_role`); a 401 when it grants none."""
        role = granted_role(claims, self.roles_claim, self.role_map)
        if role is None:
            raise unauthorized(f"token grants none of the roles {', '.join(ROLES)} ({'.'.join(self.roles_claim)})")
        return role


def granted_role(claims: dict[str, Any], roles_claim: Sequence[str], role_map: dict[str, str]) -> str | None:
    """The hms role `claims` grant: the roles claim (a string or a list, at a dotted path), each name mapped; of
    several, the one with the most rights (a staff member with two roles gets the broader one)."""
    found: Any = claims
    for step in roles_claim:
        found = found.get(step) if isinstance(found, dict) else None
    names = [found] if isinstance(found, str) else found if isinstance(found, list) else []
    granted = {role_map.get(n, n) for n in names if isinstance(n, str)}
    return next((role for role in PRECEDENCE if role in granted), None)


def identity() -> Identity:
    """The caller of this request (after `requires`)."""
    return g.hms_identity  # type: ignore[no-any-return]


def caller() -> Identity | None:
    """The verified caller: the bearer token, else who signed in to the web session; None when neither.

    A present but invalid token raises a 401 Problem.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if header and (scheme.lower() != "bearer" or not token.strip()):
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    if token.strip():
        return current_app.extensions["hms.verifier"].verify(token.strip())  # type: ignore[no-any-return]
    who = session.get("who")  # set at sign-in (hms.gateway.signin); the cookie is signed with the mesh's secret
    if isinstance(who, dict) and isinstance(who.get("sub"), str) and isinstance(who.get("role"), str):
        return Identity(who["sub"], who["role"])
    return None


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
