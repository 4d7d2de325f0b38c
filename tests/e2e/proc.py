"""Drive a real `hms up` process: start it on a free port, talk HTTP to it, SIGKILL it, start it again."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on loopback that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HmsProcess:
    """One `hms up` process with its own instance folder and environment."""

    def __init__(
        self, instance: Path, env: dict[str, str] | None = None, args: list[str] | None = None, log: str = "hms.log"
    ) -> None:
        self.instance, self.port = instance, free_port()
        self.env = {**os.environ, "HMS_INSTANCE_PATH": str(instance), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args or ["up", "--port", str(self.port)]
        self.serves_http = self.args[0] == "up"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = instance / log
        self.kills = 0

    def start(self, ready_timeout: float = 30.0) -> None:
        """Start the process and wait until /readyz answers 200."""
        self.instance.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hms.cli", *self.args], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if not self.serves_http:
            return
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hms exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if self.request("GET", "/readyz", timeout=2)[0] == 200:
                    return
            except (OSError, http.client.HTTPException):  # not listening yet, or closing
                pass
            time.sleep(0.1)
        raise TimeoutError(f"hms not ready within {ready_timeout}s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, no buffer is flushed."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """One HTTP request; returns (status, decoded JSON or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body) if body is not None else None
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            raw = resp.read().decode()
            try:
                return resp.status, json.loads(raw)
            except ValueError:
                return resp.status, raw
        finally:
            conn.close()

    def submit_until_accepted(self, body: Any, headers: dict[str, str], timeout: float = 120.0) -> dict[str, Any]:
        """POST a claim like a patient client: on a dropped connection (the process was killed, even mid-answer)
        or a 502/503/504 (the broker is restarting), retry with the same headers, so the same Idempotency-Key."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status, reply = self.request("POST", "/claims", body, headers, timeout=10)
            except (OSError, http.client.HTTPException):
                time.sleep(0.1)
                continue
            if status == 201:
                return reply  # type: ignore[no-any-return]
            if status not in (502, 503, 504):
                raise AssertionError(f"{status} {reply}")
            time.sleep(0.1)
        raise AssertionError(f"never accepted within {timeout}s")

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run an `hms` command against the same instance folder."""
        return subprocess.run(
            [sys.executable, "-m", "hms.cli", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def reconciled(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`hms audit reconcile --strict` once it passes, else its last run after `timeout`. Each service takes an
        event at its own pace: after a broker restart metrics may record a payment an ack wait after svc marks
        the claim paid, so a reconcile right after the last claim is paid can see a gap that closes by itself;
        one still open after `timeout` (many ack waits) is lost."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.cli("audit", "reconcile", "--strict")
            if run.returncode == 0 or time.monotonic() > deadline:
                return run
            time.sleep(1)
