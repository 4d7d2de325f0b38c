"""HMS-SYS-AUTH on the bus: every message carries its sender's service token, checked against one mesh policy."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import jwt

from hms.contracts import HERE as CONTRACTS
from hms.contracts.vocabulary import MESH_AUDIENCE, SERVICE_TOKEN_TYPE

from .base import Bus, BusWrapper, Event, Handler, Refused, Reply, Subscription, Unverifiable
from .subjects import matches
from .tokens import KeySet, Verified

log = logging.getLogger("hms.bus.guard")
AUTH_HEADER = "Hms-Sys-Auth"
VERBS = ("publish", "subscribe", "serve", "request")
OPEN_PREFIXES = ("$SRV.", "_INBOX.")  # discovery and reply inboxes are open to every service
POLICY_FILE = CONTRACTS / "policy" / "mesh.json"


class Policy:
    """What each service may publish, subscribe to, serve and request."""

    def __init__(self, services: dict[str, dict[str, list[str]]]) -> None:
        self.services = {name: {verb: list(rules.get(verb, [])) for verb in VERBS} for name, rules in services.items()}

    @classmethod
    def load(cls, path: Path = POLICY_FILE) -> Policy:
        """The policy file shipped with the contracts."""
        return cls(json.loads(Path(path).read_text())["services"])

    def allows(self, service: str, verb: str, subject: str) -> bool:
        """Whether `service` may `verb` on `subject` (a subscription pattern must fit inside an allowed one)."""
        if subject.startswith(OPEN_PREFIXES):
            return True
        return any(matches(p, subject) or p == subject for p in self.services.get(service, {}).get(verb, []))


class Guard:
    """Issues this process's service tokens and identifies the sender of each message."""

    def __init__(self, policy: Policy, keys: KeySet, issue: Callable[[str], str] | None, *, issuer: str) -> None:
        self.policy, self.keys, self.issue, self.issuer = policy, keys, issue, issuer
        self._tokens: dict[str, tuple[str, float]] = {}
        self._verified = Verified()
        self._lock = threading.Lock()

    def token(self, service: str) -> str:
        """A valid token for a service hosted here, renewed before it expires."""
        with self._lock:
            token, renew_at = self._tokens.get(service, ("", 0.0))
            if time.time() >= renew_at:
                if self.issue is None:
                    raise Refused(f"no service-token issuer in this process for {service}")
                token = self.issue(service)
                claims = jwt.decode(token, options={"verify_signature": False})
                renew_at = claims["iat"] + 0.8 * (claims["exp"] - claims["iat"])
                self._tokens[service] = (token, renew_at)
            return token

    def headers(self, service: str) -> dict[str, str]:
        """The header that identifies `service` as a message's sender."""
        return {AUTH_HEADER: self.token(service)}

    def identify(self, token: str | None) -> str:
        """The service a token belongs to; Refused for a missing, forged, expired or user token."""
        if not token:
            raise Refused("no service token (Hms-Sys-Auth header)")
        known = self._verified.get(token, self.keys)
        if known is not None:
            return str(known)
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != SERVICE_TOKEN_TYPE:
                raise Refused("not a service token (a user token is never accepted on the bus)")
            kid = header.get("kid")
            key = self.keys.get(kid) if isinstance(kid, str) else None
            if key is None:  # another member may know it: a key not learned yet here, or another mesh's process
                raise Unverifiable(f"service token signed by a key this process does not know (kid {kid!r})")
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=MESH_AUDIENCE,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Refused(f"invalid service token: {exc}") from None
        service = str(claims["sub"])
        if service not in self.policy.services:
            raise Refused(f"service token for unknown service {service!r}")
        self._verified.put(token, service, float(claims["exp"]), str(kid), key)
        return service

    def check(self, token: str | None, verb: str, subject: str) -> str:
        """The sender's service if the policy lets it `verb` on `subject`; Refused otherwise (and logged)."""
        if subject.startswith(OPEN_PREFIXES):
            return ""
        try:
            service = self.identify(token)
        except Refused as exc:
            log.warning("refused %s on %s: %s", verb, subject, exc)
            raise
        if not self.policy.allows(service, verb, subject):
            log.warning("refused: %s may not %s %s (HMS-SYS-AUTH policy)", service, verb, subject)
            raise Refused(f"{service} may not {verb} {subject}")
        return service


class GuardedBus(BusWrapper):
    """Any bus engine, with HMS-SYS-AUTH checks on publish, request, subscribe and every delivery."""

    def __init__(self, inner: Bus, guard: Guard) -> None:
        super().__init__(inner)
        self.guard = guard

    def publish(
        self, subject: str, data: dict[str, Any], *, headers: dict[str, str] | None = None, **kw: Any
    ) -> Future[None]:
        self.guard.check((headers or {}).get(AUTH_HEADER), "publish", subject)
        return self.inner.publish(subject, data, headers=headers, **kw)

    def send_request(
        self,
        subject: str,
        data: dict[str, Any],
        timeout: float = 5.0,
        *,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Reply:
        # The requester names itself (Mesh.credentials); a request without a token is refused like any other.
        self.guard.check((headers or {}).get(AUTH_HEADER), "request", subject)
        return self.inner.send_request(subject, data, timeout, headers=headers, **kw)

    def subscribe(self, subject: str, handler: Handler, queue: str | None = None, **options: Any) -> Subscription:
        service = (queue or "").split(".")[0]
        if subject.startswith(OPEN_PREFIXES):
            guarded = handler
        else:
            verb = next((v for v in ("subscribe", "serve") if self.guard.policy.allows(service, v, subject)), None)
            if verb is None:
                log.warning("refused: %s may not subscribe to %s (HMS-SYS-AUTH policy)", service or "?", subject)
                raise Refused(f"{service or 'an anonymous subscriber'} may not subscribe to {subject}")
            sender_verb = "publish" if verb == "subscribe" else "request"

            def guarded(event: Event) -> Any:
                self.guard.check(event.headers.get(AUTH_HEADER), sender_verb, event.subject)
                return handler(event)

        return self.inner.subscribe(subject, guarded, queue, **options)


class Signed(BusWrapper):
    """A bus whose publishes and requests carry one sender's service token (the gateway's)."""

    def __init__(self, inner: Bus, credentials: Callable[[], dict[str, str]]) -> None:
        super().__init__(inner)
        self.credentials = credentials

    def publish(
        self, subject: str, data: dict[str, Any], *, headers: dict[str, str] | None = None, **kw: Any
    ) -> Future[None]:
        return self.inner.publish(subject, data, headers={**self.credentials(), **(headers or {})}, **kw)

    def send_request(
        self,
        subject: str,
        data: dict[str, Any],
        timeout: float = 5.0,
        *,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Reply:
        return self.inner.send_request(subject, data, timeout, headers={**self.credentials(), **(headers or {})}, **kw)
