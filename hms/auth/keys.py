"""The development identity provider: an RSA signing key, its JWKS, and token signing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from hms.contracts.vocabulary import MESH_AUDIENCE, ROLES, SERVICE_TOKEN_TYPE, USER_TOKEN_TYPE


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an RSA public JWK, used as its `kid`."""
    canonical = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class IdentityProvider:
    """Signs tokens with a key kept in a file, generated on first use; publishes its public key."""

    def __init__(self, private_key_file: str, jwks_file: str, issuer: str, audience: str, ttl: int = 3600) -> None:
        self.private_key_file, self.jwks_file = Path(private_key_file), Path(jwks_file)
        self.issuer, self.audience, self.ttl = issuer, audience, ttl
        self._key: rsa.RSAPrivateKey | None = None
        self.kid = ""

    def ensure_keys(self) -> None:
        """Load the signing key (creating it if missing) and make sure the JWKS file lists it."""
        if not self.private_key_file.exists():
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            try:
                _write_private(self.private_key_file, pem)
            except FileExistsError:
                pass  # another process created it first; use theirs
        loaded = serialization.load_pem_private_key(self.private_key_file.read_bytes(), password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey):
            raise ValueError(f"{self.private_key_file}: not an RSA private key")
        self._key = loaded
        public = json.loads(RSAAlgorithm.to_jwk(loaded.public_key()))
        self.kid = thumbprint(public)
        jwks = self.read_jwks()
        if not any(k.get("kid") == self.kid for k in jwks["keys"]):
            jwks["keys"].append({**public, "kid": self.kid, "use": "sig", "alg": "RS256"})
            self.jwks_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.jwks_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(jwks, indent=2))
            tmp.replace(self.jwks_file)

    def read_jwks(self) -> dict[str, Any]:
        """The JWKS file's content ({"keys": []} when absent)."""
        if not self.jwks_file.exists():
            return {"keys": []}
        return dict(json.loads(self.jwks_file.read_text()))

    def key(self) -> rsa.RSAPrivateKey:
        """The signing key, made or loaded on first use."""
        if self._key is None:
            self.ensure_keys()
        if self._key is None:
            raise RuntimeError(f"{self.private_key_file}: no signing key")
        return self._key

    def issue_service_token(self, service: str, permissions: dict[str, list[str]], ttl: int = 900) -> str:
        """A short-lived HMS-SYS-AUTH token for `service`, carrying what the mesh policy allows it."""
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": MESH_AUDIENCE,
            "sub": service,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "perm": permissions,
        }
        return jwt.encode(payload, self.key(), algorithm="RS256", headers={"kid": self.kid, "typ": SERVICE_TOKEN_TYPE})

    def issue(self, sub: str, role: str, *, ttl: int | None = None, **claims: Any) -> str:
        """A signed user token for `sub` with `role`."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if not sub or len(sub) > 128:
            raise ValueError("sub must be 1 to 128 characters")
        now = int(time.time())
        payload = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "role": role,
            "iat": now,
            "nbf": now,
            "exp": now + (ttl or self.ttl),
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(payload, self.key(), algorithm="RS256", headers={"kid": self.kid, "typ": USER_TOKEN_TYPE})
