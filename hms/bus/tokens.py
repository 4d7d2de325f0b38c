"""Public keys from a JWKS file, re-read when the file changes (shared by the gateway and the bus guard)."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import jwt


class KeySet:
    """The keys of a JWKS file by kid; a key removed from the file stops working within `recheck_s`."""

    def __init__(self, path: str, *, recheck_s: float = 1.0) -> None:
        self.path, self.recheck_s = path, recheck_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def get(self, kid: str) -> jwt.PyJWK | None:
        """The trusted key with this kid, if any."""
        return self.keys().get(kid)

    def keys(self) -> dict[str, jwt.PyJWK]:
        """Every trusted key by kid."""
        if time.monotonic() - self._checked >= self.recheck_s:
            with self._lock:  # other threads wait for the first load instead of seeing no keys
                if time.monotonic() - self._checked >= self.recheck_s:
                    try:
                        st = os.stat(self.path)
                        stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
                    except FileNotFoundError:
                        stamp = None
                    if stamp != self._stamp:
                        self._keys = self._load() if stamp else {}
                        self._stamp = stamp
                    self._checked = time.monotonic()
        return self._keys

    def _load(self) -> dict[str, jwt.PyJWK]:
        with open(self.path, encoding="utf-8") as f:
            doc = json.load(f)
        keys = {}
        for entry in doc.get("keys", []):
            if entry.get("kid") and entry.get("kty") in ("RSA", "EC") and "d" not in entry:
                keys[entry["kid"]] = jwt.PyJWK(
                    entry, entry.get("alg") or ("RS256" if entry["kty"] == "RSA" else "ES256")
                )
        return keys


class Verified:
    """Tokens whose signature and claims were checked, by token: what they proved, until they expire or the key
    that signed them leaves its key set (a removed key revokes its tokens here as it does for a fresh check)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._seen: dict[str, tuple[object, float, str, object]] = {}

    def get(self, token: str, keys: Any) -> Any:
        """What `token` proved when it was checked, or None if it was not, has expired or its key is gone."""
        hit = self._seen.get(token)
        if hit is None:
            return None
        proved, expires, kid, key = hit
        if expires <= time.time() or keys.get(kid) is not key:
            self._seen.pop(token, None)
            return None
        return proved

    def put(self, token: str, proved: object, expires: float, kid: str, key: object) -> None:
        """Remember that `token`, signed with `key` (`kid`), proved `proved` until `expires` (epoch seconds)."""
        if len(self._seen) >= self.size:  # drop the expired; if all are live, start again (a bound, not a policy)
            now = time.time()
            live = {t: hit for t, hit in self._seen.items() if hit[1] > now}
            self._seen = live if len(live) < self.size else {}
        self._seen[token] = (proved, expires, kid, key)
