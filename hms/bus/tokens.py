"""Public keys from a JWKS file, re-read when the file changes (shared by the gateway and the bus guard)."""

from __future__ import annotations

import json
import os
import threading
import time

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
