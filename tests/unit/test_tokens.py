"""Verified tokens are checked once, and a cached check never outlives the token or the key that signed it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from hms.bus.tokens import KeySet, Verified
from hms.gateway.security import JwksVerifier


class Keys:
    def __init__(self, **keys: object) -> None:
        self.keys = keys

    def get(self, kid: str) -> object:
        return self.keys.get(kid)


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    key, seen = object(), Verified()
    keys = Keys(k1=key)
    seen.put("t", "svc", time.time() + 60, "k1", key)
    assert seen.get("t", keys) == "svc"
    assert seen.get("other", keys) is None
    seen.put("old", "svc", time.time() - 1, "k1", key)
    assert seen.get("old", keys) is None


def test_a_removed_or_replaced_key_revokes_what_it_signed() -> None:
    key, seen = object(), Verified()
    seen.put("t", "svc", time.time() + 60, "k1", key)
    assert seen.get("t", Keys()) is None  # the key left the set
    seen.put("t", "svc", time.time() + 60, "k1", key)
    assert seen.get("t", Keys(k1=object())) is None  # another key under the same kid


def test_the_cache_is_bounded_and_keeps_live_tokens_first() -> None:
    key, seen = object(), Verified(size=3)
    keys = Keys(k=key)
    seen.put("dead", 0, time.time() - 1, "k", key)
    seen.put("a", 1, time.time() + 60, "k", key)
    seen.put("b", 2, time.time() + 60, "k", key)
    seen.put("c", 3, time.time() + 60, "k", key)  # full: the expired one goes, the live ones stay
    assert [seen.get(t, keys) for t in ("a", "b", "c")] == [1, 2, 3]
    seen.put("d", 4, time.time() + 60, "k", key)  # full of live ones: starts again
    assert [seen.get(t, keys) for t in ("a", "b", "c", "d")] == [None, None, None, 4]


@pytest.fixture
def signer(tmp_path: Path) -> tuple[Any, Path]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = {**json.loads(RSAAlgorithm.to_jwk(private.public_key())), "kid": "k1", "alg": "RS256"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public]}))
    return private, jwks


def test_a_users_token_is_verified_once_per_gateway(signer: tuple[Any, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    private, jwks = signer
    verifier = JwksVerifier(KeySet(str(jwks), recheck_s=0), "hms-dev", "hms")
    now = int(time.time())
    claims = {"sub": "diego", "role": "citizen", "iss": "hms-dev", "aud": "hms", "iat": now, "exp": now + 60}
    token = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})
    decoded = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **kw: decoded.append(1) or real(*a, **kw))
    assert [verifier.verify(token).sub for _ in range(3)] == ["diego"] * 3
    assert len(decoded) == 1
    jwks.write_text(json.dumps({"keys": []}))  # the key is withdrawn: the remembered check goes with it
    with pytest.raises(Exception, match="not trusted"):
        verifier.verify(token)
