"""Where a POST /claims spends its time, stage by stage: hms in one process, and over NATS in three.

    python -m bench.post_path [--seconds 15] [--out FILE]

Each configuration of `bench.side_by_side` takes claims at a steady 20 a second, as in its steady phase, with its
processes started through this module (`python -m bench.post_path serve ARGS`: `hms ARGS` with stamps), which
writes the time of each stage on the clock all processes share (CLOCK_MONOTONIC): the gateway's (the request in,
the view, the rate limit's count, the registration answered, svc's decision, the response out), how long the two
responders ran, and over NATS each hop of the registration's round trip. Printed: p50/p90/p99 of each stage, in ms.

An instrument, not a benchmark: it wraps the functions it times (private ones of the NATS engine and of nats-py's
transport among them), so it adds a little to what it measures, and it changes with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

GATEWAY = ("in", "view", "count", "counted", "registered", "decided", "out")
HOPS = {  # the registration's round trip over NATS, in order: each stage, and what the time to reach it was
    "queued": "",  # the gateway queues the request for its event loop: where the trip starts
    "sent": "the loop hands it to nats-py",
    "written": "nats-py writes it to the socket",
    "read": "ach's nats-py reads it off its socket (through nats-server)",
    "arrived": "ach's subscription callback gets it",
    "working": "a worker thread of ach starts on it",
    "answered": "the worker queues the reply (decode, checks, the responder, encode)",
    "replied": "ach's loop hands the reply to nats-py",
    "back": "the gateway's loop gets the reply",
}
REGISTER = "ach.accounts.register"


def serve(args: list[str]) -> None:
    """`hms ARGS` with stamps written to $POST_PATH_OUT.<pid>, one JSON list a line."""
    import flask
    import nats.aio.transport as transport

    import hms.bus.nats as engine
    import hms.runtime.host as host
    from hms.cli import main
    from hms.gateway import api, ratelimit

    out = open(f"{os.environ['POST_PATH_OUT']}.{os.getpid()}", "a", buffering=1)  # noqa: SIM115  # the process's
    lock, local = threading.Lock(), threading.local()

    def write(*row: Any) -> None:
        with lock:
            out.write(json.dumps(row) + "\n")

    def stamp(stage: str) -> None:
        if getattr(local, "stages", None) is not None:
            local.stages.append((stage, time.perf_counter()))

    def around(owner: Any, name: str, before: str, after: str) -> None:
        inner = getattr(owner, name)

        def timed(*a: Any, **kw: Any) -> Any:
            stamp(before)
            try:
                return inner(*a, **kw)
            finally:
                stamp(after)

        setattr(owner, name, timed)

    wsgi = flask.Flask.wsgi_app

    def wsgi_app(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("PATH_INFO") != "/claims":
            return wsgi(self, environ, start_response)
        local.stages = [("in", time.perf_counter())]
        try:
            return wsgi(self, environ, start_response)
        finally:
            stamp("out")
            write("post", local.stages)
            local.stages = None

    flask.Flask.wsgi_app = wsgi_app  # type: ignore[method-assign]
    around(api, "submit_claim", "view", "submitted")
    around(ratelimit.RateLimiter, "acquire", "count", "counted")
    around(api, "_decide", "registered", "decided")

    serve_as = host.Mesh.serve

    def timed_responder(self: Any, subject: str, handler: Callable[[Any], Any], service: str) -> None:
        def responder(event: Any) -> Any:
            started = time.perf_counter()
            try:
                return handler(event)
            finally:
                write("responder", subject, (time.perf_counter() - started) * 1000)

        serve_as(self, subject, responder if subject in (REGISTER, "svc.claims.submit") else handler, service)

    host.Mesh.serve = timed_responder  # type: ignore[method-assign]

    def hop(token: str, stage: str) -> None:
        write("hop", token, stage, time.perf_counter())

    queue = engine.NatsBus._out

    def _out(self: Any, kind: int, subject: str, payload: bytes, reply: str, *rest: Any) -> None:
        if kind == engine._REQUEST and subject == REGISTER:
            hop(reply.rsplit(".", 1)[-1], "queued")
        elif kind == engine._REPLY:
            hop(subject.rsplit(".", 1)[-1], "answered")
        queue(self, kind, subject, payload, reply, *rest)

    send = engine.NatsBus._send

    async def _send(self: Any, batch: list[Any]) -> None:
        for kind, subject, _, reply, *_ in batch:
            if kind == engine._REQUEST and subject == REGISTER:
                hop(reply.rsplit(".", 1)[-1], "sent")
            elif kind == engine._REPLY:
                hop(subject.rsplit(".", 1)[-1], "replied")
        await send(self, batch)

    on_reply = engine.NatsBus._on_reply

    async def _on_reply(self: Any, msg: Any) -> None:
        hop(msg.subject.rsplit(".", 1)[-1], "back")
        await on_reply(self, msg)

    answer = engine.NatsBus._answer

    def _answer(self: Any, handler: Any, msg: Any) -> None:
        if msg.subject == REGISTER:
            hop(msg.reply.rsplit(".", 1)[-1], "working")
        answer(self, handler, msg)

    subscribe_core = engine.NatsBus._subscribe_core

    async def _subscribe_core(self: Any, sub: Any, handler: Any) -> None:
        await subscribe_core(self, sub, handler)
        if sub.subject == REGISTER:
            callback = sub.sub._cb

            async def arrived(msg: Any) -> None:
                hop(msg.reply.rsplit(".", 1)[-1], "arrived")
                await callback(msg)

            sub.sub._cb = arrived

    published = re.compile(rb"ach\.accounts\.register \S+\.(\d+) ")  # HPUB subject reply-inbox.token
    delivered = re.compile(rb"ach\.accounts\.register \d+ \S+\.(\d+) ")  # HMSG subject sid reply-inbox.token
    writelines, read = transport.TcpTransport.writelines, transport.TcpTransport.read

    def _writelines(self: Any, payload: list[bytes]) -> None:
        for chunk in payload:
            for m in published.finditer(chunk):
                hop(m.group(1).decode(), "written")
        writelines(self, payload)

    async def _read(self: Any, size: int) -> bytes:
        data: bytes = await read(self, size)
        for m in delivered.finditer(data):
            hop(m.group(1).decode(), "read")
        return data

    engine.NatsBus._out = _out  # type: ignore[method-assign]
    engine.NatsBus._send = _send  # type: ignore[method-assign]
    engine.NatsBus._on_reply = _on_reply  # type: ignore[method-assign]
    engine.NatsBus._answer = _answer  # type: ignore[method-assign]
    engine.NatsBus._subscribe_core = _subscribe_core  # type: ignore[method-assign]
    transport.TcpTransport.writelines = _writelines  # type: ignore[method-assign]
    transport.TcpTransport.read = _read  # type: ignore[method-assign]
    main(args)


def measure(kind: Any, workdir: Path, seconds: float) -> dict[str, list[float]]:
    """Stage durations (ms) of the POSTs of a steady run of `kind` (a bench.side_by_side system class)."""
    from bench import side_by_side as sbs

    stamps = workdir / "stamps"

    class Probed(kind):  # type: ignore[misc, valid-type]
        def spawn(self, args: list[str], env: dict[str, str], log: str) -> None:
            if args[1:3] == ["-m", "hms.cli"]:
                args = [args[0], "-m", "bench.post_path", "serve", *args[3:]]
            root = str(Path(__file__).resolve().parents[1])  # bench/ is not installed: the processes find it here
            super().spawn(args, {**env, "POST_PATH_OUT": str(stamps), "PYTHONPATH": root}, log)

    system, _ = sbs.warmed(Probed, workdir / "system")
    try:
        time.sleep(0.5)
        done = {f: f.stat().st_size for f in workdir.glob("stamps.*")}  # the warm-up's stamps are left out
        _, latencies = sbs.run_clients(system, [f"p-{i:05d}" for i in range(int(seconds * 20))], 20)
        time.sleep(0.5)
    finally:
        system.stop()
    rows = []
    for f in workdir.glob("stamps.*"):
        with f.open("rb") as lines:
            lines.seek(done.get(f, 0))
            rows += [json.loads(line) for line in lines]
    found: dict[str, list[float]] = defaultdict(list)
    found["POST as the client saw it"] = latencies
    hops: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row[0] == "post":
            at = dict(row[1])
            for a, b in zip(GATEWAY, GATEWAY[1:], strict=False):
                if a in at and b in at:
                    found[f"gateway: {a} → {b}"].append((at[b] - at[a]) * 1000)
            found["gateway: in → out"].append((at["out"] - at["in"]) * 1000)
        elif row[0] == "responder":
            found[f"responder {row[1]} ran"].append(row[2])
        else:
            hops[row[1]][row[2]] = row[3]
    whole = [h for h in hops.values() if HOPS.keys() <= h.keys()]
    for a, b in zip(HOPS, list(HOPS)[1:], strict=False):
        found[f"registration over NATS: {HOPS[b]}"] = [(h[b] - h[a]) * 1000 for h in whole]
    found["registration over NATS: the whole round trip"] = [(h["back"] - h["queued"]) * 1000 for h in whole]
    return found


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        serve(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="of steady claims, 20 a second (default 15)")
    parser.add_argument("--out", type=Path, help="also write the table to this file (markdown)")
    args = parser.parse_args(argv)
    from bench import side_by_side as sbs

    kinds = (sbs.Hms, sbs.HmsNats3)
    results = []
    for kind in kinds:
        with tempfile.TemporaryDirectory() as d:
            results.append(measure(kind, Path(d), args.seconds))
    stages = list(dict.fromkeys(s for r in results for s in r))
    lines = [
        "| stage (ms, p50 / p90 / p99) | " + " | ".join(k.name for k in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for stage in stages:
        cells = [
            " / ".join(f"{sbs.pct(r[stage], q):.2f}" for q in (50, 90, 99)) if r.get(stage) else "—" for r in results
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + f"\n\n{int(args.seconds * 20)} claims at 20 a second in each configuration.\n"
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
