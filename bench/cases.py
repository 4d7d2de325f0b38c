"""The benchmark cases: each returns (ours, baseline) in operations per second, measured back to back."""

from __future__ import annotations

import asyncio
import http.client
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import blinker
from sqlalchemy import Column, Integer, MetaData, String, Table, text

from hms.bus import Contracts, Event
from hms.bus.memory import MemoryBus
from hms.runtime import ServiceStore, messaging_tables
from hms.runtime.database import make_engine
from tests.conftest import DIEGO, eventually

SUBMITTED = {"claimId": "c-1", "citizen": "diego", "submittedAt": "2026-11-27T10:00:00Z"}
LOAD = {"HMS_CLAIMS_PER_MINUTE": 10**6, "HMS_OUTBOX_POLL_S": 0.05}  # no rate limit in the way; relays wake often


class Arrivals:
    """Deliveries counted by the handlers' threads; the measuring thread sleeps until the last one wakes it.

    Not a polling loop: one that looked every half millisecond took the GIL from the threads being measured
    thousands of times a second (the NATS case ran about a fifth faster at 2,000 messages without it)."""

    def __init__(self, n: int) -> None:
        self.n, self.count = n, 0
        self._lock, self._all = threading.Lock(), threading.Event()

    def add(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.n:
                self._all.set()

    def wait(self, timeout: float = 120) -> None:
        if not self._all.wait(timeout):
            raise TimeoutError(f"{self.count} of {self.n} delivered within {timeout:g} s")


def running_mesh(settings: dict[str, Any], *, start: bool = True) -> tuple[Any, Any]:
    """An app on a fresh instance folder, its databases migrated and (with `start`) its background work running."""
    from hms import create_app
    from hms.runtime import mesh_of

    app = create_app({"HMS_INSTANCE_PATH": tempfile.mkdtemp(), **settings})
    mesh = mesh_of(app)
    mesh.upgrade()
    if start:
        mesh.start()
    return app, mesh


def one_at_a_time(claims: int, *, warm: int, counting: Callable[[bool], None], pause: float = 0.0) -> None:
    """An in-process mesh (SQLite, the in-process bus; idle polls a minute apart, so only the commits that give
    them work wake the relays and the payer) takes `warm` + `claims` claims one at a time, each until its transfer is
    on the sandbox bank's statement, then `pause` s for what follows it (payment.sent to svc, metrics, the
    notifier). `counting(True)` comes before the first of the `claims`, `counting(False)` once the last settled."""
    app, mesh = running_mesh({**LOAD, "HMS_OUTBOX_POLL_S": 60, "HMS_ACH_POLL_S": 60})
    statement = Path(app.config["HMS_ACH_SANDBOX_STATEMENT"])
    idp, client = app.extensions["hms.auth"], app.test_client()
    tokens = [idp.issue(f"one-{i}", "citizen") for i in range(warm + claims)]

    def paid() -> int:
        return len(statement.read_text().splitlines()) if statement.exists() else 0

    try:
        for i, token in enumerate(tokens):
            if i == warm:
                counting(True)
            if client.post("/claims", json=DIEGO, headers={"Authorization": f"Bearer {token}"}).status_code != 201:
                raise RuntimeError("claim refused")
            eventually(lambda i=i: paid() > i, 30, interval=0.001)
            time.sleep(pause)
        time.sleep(0.3)  # what follows the last transfer
    finally:
        counting(False)
        mesh.close()


def payout_report(mesh: Any) -> dict[str, Any]:
    """The auditors' report, asked for as the gateway asks for it."""
    return mesh.bus.request("metrics.payouts.report", {}, 10, headers=mesh.credentials("gateway"))  # type: ignore[no-any-return]


def rate(n: int, fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


# -- 1. in-process publish → handler, with contract validation, against blinker send -------------------------
def publish_vs_blinker(n: int) -> tuple[float, float]:
    bus = MemoryBus(Contracts())
    got = Arrivals(n)
    bus.subscribe("claim.submitted", lambda event: got.add(), queue="bench")

    def ours() -> None:
        for _ in range(n):
            bus.publish("claim.submitted", SUBMITTED)
        got.wait()

    signal = blinker.Signal()
    seen, lock = [0], threading.Lock()

    def raw_handler(sender: Any, **kw: Any) -> None:
        with lock:
            seen[0] += 1

    signal.connect(raw_handler, weak=False)

    def baseline() -> None:
        for _ in range(n):
            signal.send(None, data=SUBMITTED)

    result = rate(n, ours), rate(n, baseline)
    bus.close()
    return result


# -- 2. durable delivery (outbox → relay → handler → inbox) against raw single-row insert+commit -------------
def durable_vs_sqlite(n: int) -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp())
    bus = MemoryBus(Contracts())

    def store(name: str) -> tuple[ServiceStore, Table]:
        md = MetaData()
        effects = Table("effects", md, Column("id", Integer, primary_key=True), Column("event_id", String(64)))
        messaging_tables(md)
        st = ServiceStore(name, md, f"sqlite:///{tmp / name}.db", bus, poll_interval=0.01)
        md.create_all(st.engine)
        return st, effects

    producer, _ = store("svc")
    consumer, effects = store("metrics")
    committed = Arrivals(n)  # counted once each effect's transaction has committed, without polling the database

    def record(s: Any, e: Event) -> None:
        s.execute(effects.insert().values(event_id=e.id))
        s.after_commit(committed.add)

    consumer.consume("claim.submitted", record, name="record")
    consumer.start()
    producer.start()

    def count() -> int:
        with consumer.engine.connect() as c:
            return int(c.execute(text("SELECT count(*) FROM effects")).scalar_one())

    def ours() -> None:
        for _ in range(n):
            with producer.session() as s:
                s.emit("claim.submitted", SUBMITTED)
        committed.wait()
        assert count() == n, "every event handled exactly once"

    raw = make_engine(f"sqlite:///{tmp / 'raw'}.db", "raw")
    with raw.begin() as c:
        c.execute(text("CREATE TABLE rows (id INTEGER PRIMARY KEY, event_id TEXT)"))

    def baseline() -> None:
        for _ in range(n):
            with raw.begin() as c:
                c.execute(text("INSERT INTO rows (event_id) VALUES (:e)"), {"e": str(uuid.uuid4())})

    result = rate(n, ours), rate(n, baseline)
    producer.dispose()
    consumer.dispose()
    bus.close()
    return result


# -- 3. the NATS engine, publish → handler, against raw nats-py (JetStream both) ----------------------------------
def run_peer(coro: Coroutine[Any, Any, float]) -> float:
    """Run a baseline on the event loop the NATS engine runs on (uvloop where installed): a careful user of raw
    nats-py or FastStream would use it too, so the ratio compares the code, not the loops."""
    from hms.bus.nats import new_loop

    with asyncio.Runner(loop_factory=new_loop) as runner:  # asyncio.run's cleanup, on that loop
        return runner.run(coro)


def nats_vs_raw(n: int, url: str) -> tuple[float, float]:
    return _ours_nats(n, url), run_peer(_raw_nats(n, url))


def nats_vs_faststream(n: int, url: str) -> tuple[float, float]:
    """The same work (JetStream durable consumer, JSON decode, ack) through FastStream's NATS broker, at its best:
    the faster of its per-message pull subscriber and its batch subscriber (`PullSub(batch=True)`)."""
    ours = _ours_nats(n, url)
    return ours, max(run_peer(_faststream(n, url, batch=False)), run_peer(_faststream(n, url, batch=True)))


async def _faststream(n: int, url: str, *, batch: bool) -> float:
    from faststream.nats import JStream, NatsBroker, PullSub

    broker = NatsBroker(url, logger=None)  # no per-message log lines: we write none either
    got, done = [0], asyncio.Event()
    stream = JStream(name="BENCHFS", subjects=["fs.>"])

    def count(k: int) -> None:
        got[0] += k
        if got[0] >= n:
            done.set()

    if batch:

        @broker.subscriber("fs.claim", stream=stream, durable="fsb", pull_sub=PullSub(batch_size=16, batch=True))
        async def handle_batch(msgs: list[dict[str, Any]]) -> None:
            count(len(msgs))
    else:

        @broker.subscriber("fs.claim", stream=stream, durable="fs", pull_sub=PullSub(batch_size=16))
        async def handle(msg: dict[str, Any]) -> None:
            count(1)

    await broker.start()
    body = Event.create("claim.submitted", SUBMITTED).to_dict()
    started = time.perf_counter()
    await asyncio.gather(*(broker.publish(body, "fs.claim", stream="BENCHFS") for _ in range(n)))
    await asyncio.wait_for(done.wait(), 120)
    elapsed = time.perf_counter() - started
    await broker.stop()
    import nats

    nc = await nats.connect(url)
    await nc.jetstream().delete_stream("BENCHFS")  # the next run starts with no messages and no consumer
    await nc.close()
    return n / elapsed


def _ours_nats(n: int, url: str) -> float:
    from hms.bus.nats import NatsBus

    bus = NatsBus(url, Contracts(), stream="BENCH", event_subjects=["claim.>"])
    got = Arrivals(n)
    bus.subscribe("claim.submitted", lambda event: got.add(), queue="bench.ours")

    def ours() -> None:
        futures = [bus.publish("claim.submitted", SUBMITTED) for _ in range(n)]
        for f in futures:
            f.result(60)
        got.wait()  # woken by the last delivery, as the baselines' awaits are

    ours_rate = rate(n, ours)
    bus._call(bus.js.delete_stream("BENCH"))
    bus.close()
    return ours_rate


async def _raw_nats(n: int, url: str) -> float:
    import nats
    from nats.js import api

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="BENCHRAW", subjects=["raw.>"]))
    psub = await js.pull_subscribe("raw.claim", durable="raw", stream="BENCHRAW")
    body = json.dumps(Event.create("claim.submitted", SUBMITTED).to_dict()).encode()

    async def consume() -> None:  # as a user runs it: consuming while the publisher publishes, 64 a pull
        done = 0
        while done < n:
            try:
                msgs = await psub.fetch(batch=64, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                json.loads(msg.data)
                await msg.ack()
                done += 1

    started = time.perf_counter()
    consumer = asyncio.create_task(consume())
    await asyncio.gather(*(js.publish("raw.claim", body) for _ in range(n)))
    await asyncio.wait_for(consumer, 120)
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCHRAW")
    await nc.close()
    return n / elapsed


# -- 4. JetStream publishing from the outbox relay against sequential awaited js.publish --------------------------
def relay_vs_sequential(n: int, url: str) -> tuple[float, float]:
    from hms.bus.nats import NatsBus

    tmp = Path(tempfile.mkdtemp())
    bus = NatsBus(url, Contracts(), stream="BENCH", event_subjects=["claim.>"])
    md = MetaData()
    messaging_tables(md)
    st = ServiceStore("svc", md, f"sqlite:///{tmp / 'svc'}.db", bus, poll_interval=0.01)
    md.create_all(st.engine)
    with st.session() as s:
        for _ in range(n):
            s.emit("claim.submitted", SUBMITTED)

    def ours() -> None:
        while st.outbox_backlog():
            st.relay_once(limit=n)
            time.sleep(0.001)

    ours_rate = rate(n, ours)
    bus._call(bus.js.delete_stream("BENCH"))
    bus.close()
    st.dispose()
    return ours_rate, run_peer(_sequential(n, url))


async def _sequential(n: int, url: str) -> float:
    import nats
    from nats.js import api

    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="BENCHSEQ", subjects=["seq.>"]))
    body = json.dumps(Event.create("claim.submitted", SUBMITTED).to_dict()).encode()
    started = time.perf_counter()
    for i in range(n):
        await js.publish("seq.claim", body, headers={"Nats-Msg-Id": str(i)})
    elapsed = time.perf_counter() - started
    await js.delete_stream("BENCHSEQ")
    await nc.close()
    return n / elapsed


# -- 5. a full claim over HTTP against a bare Flask JSON endpoint, same server and client -------------------------
def serve(app: Any) -> tuple[Any, int]:
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    return server, server.effective_port


def post_many(port: int, path: str, bodies: list[tuple[dict[str, Any], dict[str, str]]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for body, headers in bodies:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        r.read()
        if r.status >= 300:
            raise RuntimeError(f"{path}: {r.status}")
    conn.close()


def http_claim_vs_flask(n: int) -> tuple[float, float]:
    from flask import Flask, jsonify, request

    app, mesh = running_mesh(LOAD)
    idp = app.extensions["hms.auth"]
    bodies = [
        (DIEGO, {"Authorization": f"Bearer {idp.issue(f'bench-{uuid.uuid4().hex[:10]}', 'citizen')}"}) for _ in range(n)
    ]
    server, port = serve(app)
    ours = rate(n, lambda: post_many(port, "/claims", bodies))
    server.close()
    mesh.close()

    bare = Flask("bare")

    @bare.post("/claims")
    def echo() -> Any:
        return jsonify(request.get_json()), 201

    server, port = serve(bare)
    base = rate(n, lambda: post_many(port, "/claims", bodies))
    server.close()
    return ours, base


# -- 6. growth: cost per claim with 1k, 10k, 100k claims already stored -------------------------------------------
def claims_per_second_with_stored(stored: int, n: int) -> float:
    from datetime import UTC, datetime
    from decimal import Decimal

    from sqlalchemy import insert

    from hms.svc.models import Claim

    app, mesh = running_mesh({"HMS_SERVICES": ["svc"]}, start=False)
    now = datetime.now(UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "citizen": f"old-{i}",
            "claimant_name": "x",
            "claimant_ssn_last4": "0000",
            "claimant_email": "x@example.org",
            "employer": "x",
            "separation_reason": "laid_off",
            "weeks_worked": 40,
            "base_wages": Decimal(30000),
            "status": "paid",
            "amount": Decimal(600),
            "reasons": [],
            "rule_version": "1",
            "submitted_at": now,
            "decided_at": now,
        }
        for i in range(stored)
    ]
    with mesh.stores["svc"].engine.begin() as c:
        for i in range(0, len(rows), 20_000):
            c.execute(insert(Claim), rows[i : i + 20_000])
    service = app.extensions["hms.svc"]
    requests = [
        Event.create(
            "svc.claims.submit",
            {
                "citizen": f"new-{uuid.uuid4().hex[:10]}",
                "claimant": DIEGO["claimant"],
                "employer": "Acme",
                "separationReason": "laid_off",
                "weeksWorked": 40,
                "baseWages": 31200.0,
            },
        )
        for _ in range(n)
    ]

    def submit_all() -> None:
        for r in requests:
            with mesh.stores["svc"].session() as s:
                service.submit(s, r)

    result = rate(n, submit_all)
    mesh.close()
    return result


# -- 7. the auditors' report over many recorded payouts --------------------------------------------------------
def report_seconds(payouts: int) -> float:
    import random
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from hms.metrics.models import Payout

    app, mesh = running_mesh({"HMS_SERVICES": ["metrics"]}, start=False)
    rng, start = random.Random(1), datetime(2026, 1, 1, tzinfo=UTC)
    with mesh.stores["metrics"].engine.begin() as c:
        batch = []
        for i in range(payouts):
            sent = start + timedelta(minutes=i % 525_600)
            batch.append(
                {
                    "claim_id": f"c{i:08d}",
                    "citizen": "x",
                    "submitted_at": sent,
                    "sent_at": sent,
                    "payment_id": "p",
                    "seconds": rng.expovariate(1 / 3),
                    "day": sent.date().isoformat(),
                }
            )
            if len(batch) == 50_000:
                c.execute(insert(Payout), batch)
                batch = []
        if batch:
            c.execute(insert(Payout), batch)
    metrics = app.extensions["hms.metrics"]
    started = time.perf_counter()
    with mesh.stores["metrics"].session() as s:
        report = metrics.report(s, Event.create("metrics.payouts.report", {}))
    elapsed = time.perf_counter() - started
    assert report["count"] == payouts
    mesh.close()
    return elapsed


# -- 8. CPU per claim, end to end in one process --------------------------------------------------------------
def cpu_per_claim(n: int) -> dict[str, float]:
    """CPU seconds this process spends per claim, from HTTP request to payout recorded (every thread)."""
    import resource

    app, mesh = running_mesh(LOAD)
    idp = app.extensions["hms.auth"]
    client = app.test_client()
    headers = [{"Authorization": f"Bearer {idp.issue(f'cpu-{i}', 'citizen')}"} for i in range(n)]

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    started, wall = cpu(), time.perf_counter()
    for h in headers:
        if client.post("/claims", json=DIEGO, headers=h).status_code != 201:
            raise RuntimeError("claim refused")
    eventually(lambda: payout_report(mesh)["count"] >= n, 60, interval=0.01)  # a bus request: not every 0.5 ms
    result = {"cpu_ms": (cpu() - started) / n * 1000, "wall_ms": (time.perf_counter() - wall) / n * 1000}
    mesh.close()
    return result


# -- 9. the same mesh in one process, and split over three (NATS both) ---------------------------------------
SPLIT = [["up", "gateway,svc,auth"], ["worker", "ach"], ["worker", "metrics", "notifier"]]


def split_vs_single(n: int, nats_url: str) -> tuple[float, float]:
    """Claims paid per second with the services split over three processes, against all of them in one
    process; both on the same NATS server, n claims from four client threads."""
    return _mesh_rate(n, nats_url, SPLIT), _mesh_rate(n, nats_url, [["up", ""]])


def _mesh_rate(n: int, nats_url: str, layout: list[list[str]]) -> float:
    from hms.auth.keys import IdentityProvider
    from tests.e2e.proc import HmsProcess

    instance = Path(tempfile.mkdtemp())
    env = {
        "HMS_BUS_URL": nats_url,
        "HMS_NATS_STREAM": f"BENCH_{uuid.uuid4().hex[:8].upper()}",
        **{k: str(v) for k, v in LOAD.items()},
    }
    procs = []
    for role in layout:
        if role[0] == "up":
            extra = {"HMS_SERVICES": role[1]} if role[1] else {}
            procs.append(HmsProcess(instance, {**env, **extra}))
        else:
            procs.append(HmsProcess(instance, env, role, log=f"{'-'.join(role[1:])}.log"))
    web = procs[0]
    try:
        web.start()  # creates the keys and the databases the workers share
        for p in procs[1:]:
            p.start()
        idp = IdentityProvider(str(instance / "jwt-private.pem"), str(instance / "jwks.json"), "hms-dev", "hms")
        admin = {"Authorization": f"Bearer {idp.issue('root', 'admin', ttl=3600)}"}
        staff = {"Authorization": f"Bearer {idp.issue('cw', 'caseworker', ttl=3600)}"}
        eventually(lambda: len(web.request("GET", "/mesh/services", headers=admin)[1].get("services", [])) >= 5, 60)
        bearer = [{"Authorization": f"Bearer {idp.issue(f'mp-{i}', 'citizen', ttl=3600)}"} for i in range(n)]

        def paid() -> int:
            code, body = web.request("GET", "/claims?status=paid&pageSize=1", headers=staff)
            return int(body["total"]) if code == 200 else 0

        def client(part: list[dict[str, str]]) -> None:
            for headers in part:
                web.submit_until_accepted(DIEGO, headers)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(bearer[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eventually(lambda: paid() >= n, 300, interval=0.05)  # an HTTP call: poll gently, not every 0.5 ms
        return n / (time.perf_counter() - started)
    finally:
        for p in procs:
            p.stop()
        asyncio.run(_delete_stream(nats_url, env["HMS_NATS_STREAM"]))


async def _delete_stream(url: str, name: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(name)
    finally:
        await nc.close()


# -- 10. payout time under a steady load ---------------------------------------------------------------------------
def payout_under_load(per_second: float, seconds: float, bus_url: str = "memory://") -> dict[str, float]:
    app, mesh = running_mesh({**LOAD, "HMS_BUS_URL": bus_url, "HMS_NATS_STREAM": "BENCHLOAD"})
    idp = app.extensions["hms.auth"]
    server, port = serve(app)
    total = int(per_second * seconds)
    started = time.monotonic()
    for i in range(total):
        time.sleep(max(0.0, started + i / per_second - time.monotonic()))
        post_many(port, "/claims", [(DIEGO, {"Authorization": f"Bearer {idp.issue(f'load-{i}', 'citizen')}"})])
    eventually(lambda: payout_report(mesh)["count"] >= total, 60, interval=0.01)
    report = payout_report(mesh)
    server.close()
    if bus_url.startswith("nats"):
        mesh.bus._call(mesh.bus.js.delete_stream("BENCHLOAD"))
    mesh.close()
    return {"p50": report["p50"], "p99": report["p99"], "count": report["count"]}
