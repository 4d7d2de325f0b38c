"""API tokens from a real, independently written OpenID Provider (panva/oidc-provider from npm, run with Node.js).

Its access tokens are shaped as Keycloak shapes them: roles under `realm_access.roles`, in the provider's names; the
gateway finds its keys through the discovery document, maps the roles, and follows a key rotation without a
restart.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from jwt.algorithms import RSAAlgorithm

from hms import create_app
from hms.runtime import mesh_of
from tests.natsd import free_port

HERE = Path(__file__).resolve().parents[1] / "oidc"
AUDIENCE = "https://hms.example/api"  # a resource indicator is an absolute URI (RFC 8707)


def private_jwk(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {k: v for k, v in json.loads(RSAAlgorithm.to_jwk(key)).items() if k != "key_ops"}  # PyJWT says ["sign"]:
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}  # published as is, it would forbid verifying


class Provider:
    """oidc-provider on a free loopback port, with the keys it is given (the first signs)."""

    def __init__(self, tmp: Path) -> None:
        if not (HERE / "node_modules" / "oidc-provider").exists():
            if os.environ.get("CI"):
                pytest.fail("tests/oidc/node_modules is missing: .ci/run installs the OpenID Provider with npm ci")
            pytest.skip("the OpenID Provider is not installed: npm ci --prefix tests/oidc")
        self.tmp, self.port, self.proc = tmp, free_port(), None
        self.issuer = f"http://127.0.0.1:{self.port}"

    def start(self, keys: list[dict[str, Any]], web: str = "", client_jwks: dict[str, Any] | None = None) -> None:
        """Serve with `keys`; with `web` (an hms base URL), its browser sign-in clients too (hms-web-jwt's public
        keys: `client_jwks`)."""
        (self.tmp / "keys.json").write_text(json.dumps({"keys": keys}))
        (self.tmp / "client-jwks.json").write_text(json.dumps(client_jwks or {"keys": []}))
        node = shutil.which("node") or "node"
        args = [str(self.port), str(self.tmp / "keys.json")] + (
            [web, str(self.tmp / "client-jwks.json")] if web else []
        )
        self.proc = subprocess.Popen(  # type: ignore[assignment]
            [node, str(HERE / "provider.mjs"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen: list[str] = []
        while len(seen) < 20 and not (seen and seen[-1].startswith("ready")):  # past its warnings (Node 20)
            seen.append(self.proc.stdout.readline())  # type: ignore[attr-defined]
        assert seen[-1].startswith("ready"), seen

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # type: ignore[unreachable]
            self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None

    def token(self, client: str) -> str:
        """An access token for the resource AUDIENCE (client credentials: its subject is the client)."""
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": AUDIENCE, "scope": "claims"})
        request = urllib.request.Request(f"{self.issuer}/token", data=body.encode(), method="POST")
        auth = urllib.parse.quote(client) + ":secret"
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310
            return str(json.load(r)["access_token"])


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[Provider]:
    p = Provider(tmp_path)
    yield p
    p.stop()


def mesh_trusting(provider: Provider, tmp_path: Path, **settings: Any) -> Flask:
    app = create_app(
        {
            "HMS_INSTANCE_PATH": str(tmp_path / "instance"),
            "HMS_JWT_ISSUER": provider.issuer,
            "HMS_JWT_AUDIENCE": AUDIENCE,
            "HMS_JWT_JWKS_URL": "discover",
            "HMS_JWT_ROLES_CLAIM": "realm_access.roles",
            "HMS_JWT_ROLE_MAP": "benefits-staff=caseworker,benefits-citizen=citizen",
            **settings,
        }
    )
    mesh_of(app).upgrade()
    mesh_of(app).start()
    return app


def test_tokens_of_a_real_provider_are_accepted_by_its_discovered_keys_and_mapped_roles(
    provider: Provider, tmp_path: Path
) -> None:
    provider.start([private_jwk("k1")])
    app = mesh_trusting(provider, tmp_path)
    try:
        client = app.test_client()
        staff = provider.token("hms-staff")
        assert (
            jwt.get_unverified_header(staff)["typ"].lower() == "at+jwt"
        )  # RFC 9068, as oidc-provider issues JWT access tokens
        listed = client.get("/claims", headers={"Authorization": f"Bearer {staff}"})
        assert listed.status_code == 200, listed.json  # benefits-staff → caseworker: all claims
        citizen = provider.token("hms-citizen")
        mine = client.get("/claims", headers={"Authorization": f"Bearer {citizen}"})
        assert mine.status_code == 200 and mine.json["total"] == 0
        refused = client.get("/audit/payouts", headers={"Authorization": f"Bearer {citizen}"})
        assert refused.status_code == 403
        nobody = client.get("/claims", headers={"Authorization": f"Bearer {provider.token('hms-nobody')}"})
        assert nobody.status_code == 401 and "realm_access.roles" in nobody.json["detail"]

        # The provider rotates its key: the gateway fetches the new one on the first token that names it (at most
        # one fetch every 5 s, so a flood of made-up key ids cannot make it hammer the provider).
        provider.stop()
        provider.start([private_jwk("k2")])
        rotated = provider.token("hms-staff")
        time.sleep(5.5)
        after = client.get("/claims", headers={"Authorization": f"Bearer {rotated}"})
        assert after.status_code == 200, after.json
    finally:
        mesh_of(app).close()


def test_provider_settings_are_checked_at_start() -> None:
    from hms.config import ConfigError, load

    with pytest.raises(ConfigError, match="HMS_JWT_ISSUER: expected an issuer URL"):
        load({"HMS_JWT_JWKS_URL": "discover", "HMS_JWT_ISSUER": "http://idp.example"}, "/tmp/x")
    with pytest.raises(ConfigError, match="HMS_JWT_JWKS_URL"):
        load({"HMS_JWT_JWKS_URL": "ftp://idp.example/jwks"}, "/tmp/x")
    with pytest.raises(ConfigError, match="HMS_JWT_ROLE_MAP"):
        load({"HMS_JWT_ROLE_MAP": "staff=superuser"}, "/tmp/x")
    ok = load({"HMS_JWT_JWKS_URL": "https://idp.example/jwks", "HMS_JWT_ROLE_MAP": "a=citizen, b=admin"}, "/tmp/x")
    assert ok["HMS_JWT_ROLE_MAP"] == {"a": "citizen", "b": "admin"}
