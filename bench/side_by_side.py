"""hms beside the conventional peer (bench/peers/flask_celery.py), on this machine, in one run.

    python -m bench.side_by_side [--rounds 3] [--claims 300] [--steady-seconds 15] [--out FILE]

Four systems, alternating in each round, each started fresh for each phase:
  peer        waitress + Flask, a Celery pool of 2 on RabbitMQ (127.0.0.1:5672, guest/guest)
  hms         `hms up`: SQLite and the in-process bus
  hms-nats    nats-server, `hms up` without ach, one `hms worker ach`
  hms-nats-3  nats-server, `hms up` with the gateway, svc and auth, `hms worker ach`, `hms worker metrics notifier`

Burst: `--claims` eligible claims from 4 keep-alive clients; claims paid per second (first POST to the last
transfer on the bank's statement) and CPU per claim of every server-side process (the broker's included).
Steady: 20 claims per second, paced, for `--steady-seconds`; POST p50/p99 as the clients saw them, payout p50/p99
(submitted to paid) as each system records it. Every phase checks the bank's statement: one transfer per claim.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tests.conftest import DIEGO  # the claim every benchmark files (bench/cases.py too)
from tests.natsd import NatsServer, free_port

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 4
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and every live descendant (and the children they have reaped)."""
    seen, todo, total = set(), list(pids), 0.0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
        todo += [int(c) for c in children]
    return total


def broker_pids() -> list[int]:
    """RabbitMQ's Erlang VM on this machine."""
    out = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


class System:
    """One system under test: its processes, how to reach it, and what it recorded."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.dir, self.port, self.procs = workdir, free_port(), []  # type: ignore[var-annotated]
        self.dir.mkdir(parents=True)

    def spawn(self, args: list[str], env: dict[str, str], log: str) -> None:
        out = open(self.dir / log, "ab")  # noqa: SIM115  # closed with the process
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=out, stderr=out, cwd=self.dir, start_new_session=True
        )
        self.procs.append(proc)  # a process group of its own: stop() ends it with every child (Celery's pool)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def tail(self) -> str:
        """The last lines of each process's log, for an error message."""
        return "\n".join(f"{f.name}: " + " | ".join(f.read_text().splitlines()[-5:]) for f in self.dir.glob("*.log"))

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # what is left of the group (a pool child, a warm shutdown)

    def statement(self) -> Path:
        raise NotImplementedError

    def token(self, sub: str) -> str:
        raise NotImplementedError

    def payout_ms(self, claims: set[str]) -> list[float]:
        """Submitted-to-paid times of these claims, as the system recorded them."""
        raise NotImplementedError

    def ready(self) -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("POST", "/claims", body=b"{}", headers={"Content-Type": "application/json"})
            return c.getresponse().status in (401, 422)
        except OSError:
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while not self.ready():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"{self.name} did not start; see {self.dir}")
            time.sleep(0.2)


class Peer(System):
    name = "Flask + Celery"

    def start(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (self.dir / "jwt-public.pem").write_bytes(public)
        queue = f"peer-{self.port}"  # a queue of this run's own: nothing left from an earlier run is consumed
        env = {"PEER_DIR": str(self.dir), "PYTHONPATH": str(ROOT), "PEER_QUEUE": queue}
        self.spawn([sys.executable, "-m", "bench.peers.flask_celery", "web", str(self.port)], env, "web.log")
        worker = [
            "-m",
            "celery",
            "-A",
            "bench.peers.flask_celery:celery",
            "worker",
            "-c",
            "2",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
        ]
        self.spawn([sys.executable, *worker, "--without-gossip", "--without-mingle", "-l", "warning"], env, "w.log")
        self.wait_ready()

    def pids(self) -> list[int]:
        return super().pids() + broker_pids()

    def statement(self) -> Path:
        return self.dir / "sandbox-bank.jsonl"

    def token(self, sub: str) -> str:
        import jwt

        return jwt.encode({"sub": sub, "role": "citizen", "aud": "hms", "exp": time.time() + 3600}, self.key, "RS256")

    def payout_ms(self, claims: set[str]) -> list[float]:
        with sqlite3.connect(self.dir / "metrics.db") as c:
            rows = c.execute("SELECT claim_id, submitted_at, paid_at FROM payouts").fetchall()
        parse = datetime.datetime.fromisoformat
        return [(parse(b) - parse(a)).total_seconds() * 1000 for cid, a, b in rows if cid in claims]


class Hms(System):
    name = "hms in-process"
    services = ""

    def env(self) -> dict[str, str]:
        return {"HMS_INSTANCE_PATH": str(self.dir / "instance")}

    def start(self) -> None:
        env = self.env()
        if self.services:
            env["HMS_SERVICES"] = self.services
        self.spawn([sys.executable, "-m", "hms.cli", "up", "--port", str(self.port)], env, "hms.log")
        self.wait_ready()
        from hms.auth.keys import IdentityProvider

        instance = self.dir / "instance"
        self.idp = IdentityProvider(str(instance / "jwt-private.pem"), str(instance / "jwks.json"), "hms-dev", "hms")

    def statement(self) -> Path:
        return self.dir / "instance" / "sandbox-bank.jsonl"

    def token(self, sub: str) -> str:
        return str(self.idp.issue(sub, "citizen", ttl=3600))

    def payout_ms(self, claims: set[str]) -> list[float]:
        with sqlite3.connect(self.dir / "instance" / "metrics.db") as c:
            rows = c.execute("SELECT claim_id, seconds FROM payouts WHERE seconds IS NOT NULL").fetchall()
        return [s * 1000 for cid, s in rows if cid in claims]


class HmsNats(Hms):
    name = "hms over NATS (2 processes)"
    services = "gateway,svc,metrics,notifier,auth"
    workers: tuple[tuple[str, ...], ...] = (("ach",),)  # each an `hms worker` process of its own

    def start(self) -> None:
        self.nats = NatsServer(self.dir / "jetstream")
        self.nats.start()
        super().start()
        for services in self.workers:
            self.spawn([sys.executable, "-m", "hms.cli", "worker", *services], self.env(), f"{services[0]}.log")
        deadline = time.monotonic() + 60
        for services in self.workers:
            while not (self.dir / "instance" / f"{services[0]}.db").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        time.sleep(1)  # a worker subscribes after its database is ready

    def env(self) -> dict[str, str]:
        return {**super().env(), "HMS_BUS_URL": self.nats.url}

    def pids(self) -> list[int]:
        return super().pids() + [self.nats.proc.pid]

    def stop(self) -> None:
        super().stop()
        self.nats.stop()


class HmsNats3(HmsNats):
    """The split a team would run on a machine with two cores or more: the gateway with svc (it answers the
    gateway's decisions in its own process), ach, and the two record keepers, each process with its own GIL."""

    name = "hms over NATS (3 processes)"
    services = "gateway,svc,auth"
    workers = (("ach",), ("metrics", "notifier"))


def post(conn: http.client.HTTPConnection, token: str, key: str) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": key}
    conn.request("POST", "/claims", body=json.dumps(DIEGO), headers=headers)
    r = conn.getresponse()
    body = json.loads(r.read() or b"{}")
    return r.status, body, (time.perf_counter() - started) * 1000


def transfers(system: System) -> Counter[str]:
    if not system.statement().exists():
        return Counter()
    text = system.statement().read_text()
    complete = text[: text.rfind("\n") + 1]  # a line the bank is still writing is read on the next look
    lines = [json.loads(x) for x in complete.splitlines() if x.strip()]
    return Counter(t["claimId"] for t in lines)


def lines_written(system: System) -> int:
    """How many whole lines the bank's statement holds: the cheap look while waiting (the driver's CPU is taken
    from the same two cores as the systems it measures); `transfers` parses them once the count is reached."""
    try:
        return system.statement().read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def run_clients(system: System, citizens: list[str], pace: float | None) -> tuple[dict[str, str], list[float]]:
    """File one claim per citizen from 4 keep-alive clients (paced at `pace` claims/s in all, else flat out)."""
    tokens = {c: system.token(c) for c in citizens}
    accepted: dict[str, str] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    start = time.monotonic() + 0.2

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", system.port, timeout=30)
        for n, citizen in enumerate(citizens[i::CLIENTS]):
            if pace:
                time.sleep(max(0.0, start + (n * CLIENTS + i) / pace - time.monotonic()))
            status, body, ms = post(conn, tokens[citizen], f"k-{citizen}")
            if status != 201 or body.get("status") != "approved":
                raise RuntimeError(f"{system.name}: {status} {body}")
            with lock:
                accepted[citizen], _ = body["id"], latencies.append(ms)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(accepted) != len(citizens):
        raise RuntimeError(f"{system.name}: {len(accepted)} of {len(citizens)} claims accepted")
    return accepted, latencies


def until_paid(system: System, accepted: dict[str, str], timeout: float = 300) -> None:
    """Wait for one transfer per accepted claim; fail on a missing, doubled or unexpected one."""
    ids = set(accepted.values())
    deadline = time.monotonic() + timeout
    while lines_written(system) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # a second transfer for a claim would show now
    seen = transfers(system)
    if set(seen) != ids or any(n != 1 for n in seen.values()):
        raise RuntimeError(
            f"{system.name}: transfers do not match claims one to one ({len(seen)} for {len(ids)})\n{system.tail()}"
        )


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def warmed(kind: Callable[[Path], System], workdir: Path) -> tuple[System, dict[str, str]]:
    """A started system that has paid a few claims (first requests: imports, caches, connections)."""
    system = kind(workdir)
    try:
        system.start()
        warm, _ = run_clients(system, [f"warm-{i}" for i in range(8)], None)
        until_paid(system, warm)
    except BaseException:
        system.stop()
        raise
    return system, warm


def burst(kind: Callable[[Path], System], workdir: Path, claims: int) -> dict[str, float]:
    system, warm = warmed(kind, workdir)
    try:
        pids = system.pids()
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        accepted, _ = run_clients(system, [f"c-{i:05d}" for i in range(claims)], None)
        until_paid(system, {**warm, **accepted})
        elapsed = time.monotonic() - t0 - 0.5  # until_paid's look for a late second transfer is not the run's
        cpu = cpu_seconds(pids) - cpu0
        return {"rate": claims / elapsed, "cpu_ms": cpu / claims * 1000}
    finally:
        system.stop()


def steady(kind: Callable[[Path], System], workdir: Path, seconds: float, per_second: float = 20) -> dict[str, float]:
    system, warm = warmed(kind, workdir)
    try:
        accepted, latencies = run_clients(system, [f"s-{i:05d}" for i in range(int(seconds * per_second))], per_second)
        until_paid(system, {**warm, **accepted})
        ids = set(accepted.values())
        deadline = time.monotonic() + 30
        while len(payouts := system.payout_ms(ids)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.1)
        return {
            "post_p50": pct(latencies, 50),
            "post_p99": pct(latencies, 99),
            "payout_p50": pct(payouts, 50),
            "payout_p99": pct(payouts, 99),
        }
    finally:
        system.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--steady-seconds", type=float, default=15)
    parser.add_argument("--out", default="", help="write the medians and every run as JSON here")
    parser.add_argument(
        "--md",
        default="",
        help="write the table as a Markdown section here (bench/SIDE_BY_SIDE.md: bench.run leads with it)",
    )
    args = parser.parse_args(argv)
    kinds: list[Callable[[Path], System]] = [Peer, Hms, HmsNats, HmsNats3]
    results: dict[str, list[dict[str, float]]] = {k.name: [] for k in kinds}  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="hms-side-by-side-") as tmp:
        for r in range(args.rounds):
            for k in kinds:
                name = k.name  # type: ignore[attr-defined]
                b = burst(k, Path(tmp) / f"{r}-{name}-burst".replace(" ", "_"), args.claims)
                s = steady(k, Path(tmp) / f"{r}-{name}-steady".replace(" ", "_"), args.steady_seconds)
                results[name].append({**b, **s})
                print(
                    f"round {r + 1} {name}: " + ", ".join(f"{k2} {v:.1f}" for k2, v in {**b, **s}.items()), flush=True
                )
    medians = {n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in results.items()}
    verdicts = goals(medians)
    table = (
        render(medians, args)
        + "\n\nIssue 15's speed goals in this run:\n\n"
        + "\n".join(f"- {goal}: {figure} — {'met' if met else 'not met'}" for goal, figure, met in verdicts)
    )
    print(table)
    if args.out:
        met = [{"goal": g, "figure": f, "met": m} for g, f, m in verdicts]
        Path(args.out).write_text(json.dumps({"medians": medians, "goals": met, "runs": results}, indent=2) + "\n")
    if args.md:
        when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        Path(args.md).write_text(
            "## hms beside the conventional build (Flask + Celery)\n\n"
            f"`python -m bench.side_by_side` on {when}; the peer is `bench/peers/flask_celery.py`.\n\n{table}\n"
        )
    return 0


SPLITS = (HmsNats.name, HmsNats3.name)


def ratio(m: dict[str, dict[str, float]], name: str, key: str) -> float:
    """`name`'s figure over the peer's, to two places: as the table shows it, and as the goals judge it."""
    return round(m[name][key] / m[Peer.name][key], 2)


def goals(m: dict[str, dict[str, float]]) -> list[tuple[str, str, bool]]:
    """Issue 15's speed goals against one run's medians: (the goal, hms's figures, met); 1.00× is no worse than the
    peer."""

    def check(
        goal: str,
        names: tuple[str, ...],
        key: str,
        met: Callable[[float], bool],
        over: Callable[[Iterable[bool]], bool] = all,
    ) -> tuple[str, str, bool]:
        shown = " / ".join(f"{ratio(m, n, key):.2f}×" for n in names)
        return goal, shown, over(met(ratio(m, n, key)) for n in names)

    one, every, cpu = (Hms.name,), (Hms.name, *SPLITS), m[Hms.name]["cpu_ms"]
    return [
        check("in one process, at least 2× the peer's claims per second", one, "rate", lambda r: r >= 2),
        ("in one process, at most 4 ms of CPU a claim", f"{cpu:.1f} ms", cpu <= 4),
        check(
            "over NATS, at least the peer's claims per second (2 / 3 processes)", SPLITS, "rate", lambda r: r >= 1, any
        ),
        check(
            "steady 20/s, payout p99 no worse than the peer's (1 / 2 / 3 processes)",
            every,
            "payout_p99",
            lambda r: r <= 1,
        ),
        check("steady 20/s, POST p99 no worse than the peer's, in one process", one, "post_p99", lambda r: r <= 1),
        check(
            "steady 20/s, POST p99 no worse than the peer's, over NATS (2 / 3 processes)",
            SPLITS,
            "post_p99",
            lambda r: r <= 1,
        ),
    ]


def render(m: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    rows = [
        ("claims paid per second", "rate", "{:.0f}", True),
        ("CPU per claim, all server processes incl. broker (ms)", "cpu_ms", "{:.1f}", False),
        ("steady 20/s: payout p50 (ms)", "payout_p50", "{:.0f}", False),
        ("steady 20/s: payout p99 (ms)", "payout_p99", "{:.0f}", False),
        ("steady 20/s: POST /claims p50 (ms)", "post_p50", "{:.1f}", False),
        ("steady 20/s: POST /claims p99 (ms)", "post_p99", "{:.1f}", False),
    ]
    names = list(m)
    out = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, key, fmt, _ in rows:
        cells = [fmt.format(m[n][key]) + ("" if n == Peer.name else f" ({ratio(m, n, key):.2f}×)") for n in names]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append(
        f"\nMedians of {args.rounds} alternating rounds; {args.claims} claims from {CLIENTS} clients; steady: "
        f"{args.steady_seconds:g} s at 20 claims/s. Ratios are to the peer."
    )
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
