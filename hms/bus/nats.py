"""The NATS engine: events on JetStream (durable consumers, explicit acks), requests on core NATS.

Flask and the handlers stay synchronous: nats-py runs on an asyncio loop in a thread of its own,
and this class is its synchronous facade. Handlers run on a thread pool, never on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from hms.contracts import ContractError, Contracts

from .base import (
    DEFAULT_BACKOFF,
    BusError,
    BusTimeout,
    DeadLetter,
    Engine,
    Event,
    Expiring,
    Handler,
    NoResponders,
    Reply,
    ReplyError,
    SubscribeOptions,
    Subscription,
    Unverifiable,
    respond,
)
from .delivery import Verdict, decide
from .subjects import matches

log = logging.getLogger("hms.bus")
T = TypeVar("T")
ERROR_HEADER, CODE_HEADER = "Nats-Service-Error", "Nats-Service-Error-Code"
# Hops a request may make between members that cannot verify it before it is dropped (the requester times out).
# A queue group picks a member at random: with half the members unable to verify, a request still lost after n hops
# has odds 2^-(n+1). 64 hops make that nil and still end a loop fast when no member can verify it.
FORWARDED_HEADER, MAX_HOPS = "Hms-Forwarded", 64
# Messages a consumer takes per pull; they go to the handler in one trip to a worker thread, one after
# another, so a batch must finish well inside ack_wait (64 handlers of a few ms each: well under a second).
# 64 is what raw nats-py users pick too; measured against 16 in alternating runs: about 13 % more messages/s.
FETCH_BATCH = 64
PULL_EXPIRES, PULL_HEARTBEAT = 30.0, 2.0  # seconds a pull request waits on the server; its idle heartbeat
PUBLISH_ACK_WAIT = 5.0  # seconds for JetStream to confirm a publish before the publisher hears of a failure
# What the loop sends, queued by any thread: (kind, subject, payload, reply inbox or "", headers, future or None).
# An event JetStream acknowledges; a core event; a request; a reply or a forwarded request (nothing waits on it).
_DURABLE, _PLAIN, _REQUEST, _REPLY = range(4)
_Outgoing = tuple[int, str, bytes, str, dict[str, str] | None, Future[Any] | None]
# What a key-value bucket's key may be: tokens of letters, digits, - / _ = joined by single dots (its subject's end).
KV_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(?:\.[-/_=a-zA-Z0-9]+)*")


def new_loop() -> asyncio.AbstractEventLoop:
    """The engine's event loop: uvloop's (libuv, in C) where it is installed, which runs nats-py's reads, writes,
    callbacks and timers for less CPU than the standard library's; else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def overlaps(a: str, b: str) -> bool:
    """Whether two subject patterns can match a common subject."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(ta) == len(tb)


def consumer_name(queue: str) -> str:
    """A JetStream consumer name for a queue group (no dots or wildcards allowed there)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in queue)


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps makes one per call for these options


def encode(event: Event) -> bytes:
    """An envelope as the bytes on the wire."""
    return _COMPACT.encode(event.to_dict()).encode()


def delivered(msg: Msg) -> int:
    """How often JetStream has delivered this message. The usual reply subject, `$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<time>.<pending>`, is read here; nats-py's `metadata` (which also parses
    the time and builds two objects, per message) reads any other form."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK" and tokens[4].isdigit():
        return int(tokens[4])
    return msg.metadata.num_delivered


def ack_problem(msg: Msg, subject: str) -> Any:
    """What JetStream's answer to a publish on `subject` says went wrong (a message, or the answer's `error`
    object as JetStream sent it); None when the stream stored it."""
    if msg.headers and msg.headers.get("Status") == "503":
        return f"no stream takes {subject}"
    if not msg.headers and msg.data.startswith(b'{"stream":') and b'"error"' not in msg.data:
        return None  # the usual answer, {"stream":…,"seq":…}: read without parsing it (2 µs a publish here)
    try:
        answer = json.loads(msg.data)
    except ValueError as exc:
        return f"unreadable answer: {exc}"
    return answer.get("error") if isinstance(answer, dict) else f"unexpected answer {answer!r}"


def decode(subject: str, data: bytes, headers: dict[str, str] | None, attempt: int = 1) -> Event:
    """Bytes from the wire as an envelope; a bare JSON body (NATS tooling) becomes the data of a new envelope."""
    body = json.loads(data) if data else {}
    if isinstance(body, dict) and "specversion" in body:
        return Event.from_dict(subject, body, headers=headers, attempt=attempt)
    return Event.create(subject, body if isinstance(body, dict) else {"value": body}, headers=headers)


class _NatsSubscription(Subscription):
    def __init__(self, bus: NatsBus, subject: str, queue: str | None, handler: Handler) -> None:
        self.bus, self.subject, self.queue, self.handler = bus, subject, queue, handler
        self.sub: Any = None
        self.task: asyncio.Task[None] | None = None
        self.ephemeral: str | None = None
        self.pull: _Pull | None = None

    def unsubscribe(self) -> None:
        self.bus._call(self.bus._unsubscribe(self), timeout=10)


class _Pull:
    """One consumer's messages as they come, on a pull request kept open (nats.go's Consume, not a loop of fetches).

    At most FETCH_BATCH messages are asked for at a time, and the next request goes out when they have come, unless
    as many wait for the worker already: a delivered, unacknowledged message is never more than two batches away
    from its handler. The worker takes what has arrived, up to a batch, in stream order, one batch at a time. The
    server beats on an idle request every PULL_HEARTBEAT seconds; a request not heard from for two beats (a
    restarted server) is asked again, as it is at once when the connection comes back; one the server refuses
    outright (no consumer, no JetStream) half a second later.
    """

    def __init__(self, bus: NatsBus, consumer: str, handler: Handler, options: SubscribeOptions) -> None:
        self.bus, self.handler, self.options = bus, handler, options
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{bus.stream}.{consumer}"
        self.inbox = bus.nc.new_inbox()
        self.arrived: list[Msg] = []
        self.owed = 0  # messages the open request may still bring; 0: ask again
        self.heard = 0.0  # when the server last said anything on the inbox
        self.pause = 0.0  # when a request failed (no consumer, no JetStream): ask again only after a while
        self.wake = asyncio.Event()
        self.request = json.dumps(
            {"batch": FETCH_BATCH, "expires": int(PULL_EXPIRES * 1e9), "idle_heartbeat": int(PULL_HEARTBEAT * 1e9)}
        ).encode()

    async def arrive(self, msg: Msg) -> None:
        self.heard = time.monotonic()
        status = (msg.headers or {}).get("Status") if not msg.data else None
        if status is None:
            self.owed = max(0, self.owed - 1)
            self.arrived.append(msg)
        elif status != "100":  # the request is over: expired (408), ended by the server (409), no consumer (503)
            if self.owed == FETCH_BATCH and status != "408":  # refused outright: ask again after a while, not in a loop
                log.debug("pull on %s: %s %s", self.subject, status, (msg.headers or {}).get("Description"))
                self.pause = self.heard + 0.5
            self.owed = 0
        self.wake.set()

    def again(self) -> None:
        """The connection is back: the server has forgotten the open request."""
        self.owed = 0
        self.wake.set()

    async def run(self) -> None:
        try:
            while not self.bus._closed:
                now = time.monotonic()
                if now - self.heard > 2 * PULL_HEARTBEAT:
                    self.owed = 0  # not heard from: a restarted server, a lost request
                if self.owed == 0 and len(self.arrived) < FETCH_BATCH and now >= self.pause:
                    self.owed, self.heard = FETCH_BATCH, now
                    try:
                        await self.bus.nc.publish(self.subject, self.request, reply=self.inbox)
                    except Exception as exc:  # closing, or the client's buffer full while reconnecting
                        log.debug("pull on %s: %r", self.subject, exc)
                        self.owed, self.pause = 0, now + 0.5
                if not self.arrived:
                    self.wake.clear()
                    wait = max(0.01, self.pause - now) if self.owed == 0 else PULL_HEARTBEAT
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):  # no task per wait, as wait_for makes
                            await self.wake.wait()
                    continue
                batch, self.arrived = self.arrived[:FETCH_BATCH], self.arrived[FETCH_BATCH:]
                await self.bus._deliver_batch(self.subject, batch, self.handler, self.options)
        except asyncio.CancelledError:
            return


class NatsBus(Engine):
    """NATS semantics on a real NATS server, with JetStream for the event subjects."""

    def __init__(
        self,
        url: str,
        contracts: Contracts | None = None,
        *,
        stream: str = "HMS_EVENTS",
        event_subjects: Sequence[str] = ("claim.>", "payment.>"),
        ack_wait: float = 30.0,
        workers: int = 8,
        name: str = "hms",
        connect_timeout: float = 10.0,
        replicas: int = 1,
    ) -> None:
        self.url, self.contracts, self.stream, self.replicas = url, contracts, stream, replicas
        self.event_subjects, self.ack_wait = tuple(event_subjects), ack_wait
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="hms-nats-handler")
        self._loop = new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hms-nats-loop", daemon=True)
        self._thread.start()
        self._subs: list[_NatsSubscription] = []
        # This process's queue members by subject; each entry replaced whole, so a requester reads a snapshot.
        self._responders: dict[str, tuple[_NatsSubscription, ...]] = {}
        self._buckets: dict[str, Any] = {}  # update(): key-value buckets by name
        self._written = Expiring()  # update(): what this process last wrote, and its revision
        self._outgoing: list[_Outgoing] = []
        self._outgoing_lock = threading.Lock()
        self._awaiting_ack: dict[str, tuple[Event, Future[None]]] = {}
        self._awaiting_reply: dict[str, tuple[str, Future[Msg], float]] = {}  # token: subject, reply, deadline
        self._next_sweep = 0.0  # when _send next drops requests whose replies were never waited for
        self._durable: dict[str, bool] = {}  # subjects published to, and whether JetStream takes them
        self._seq = itertools.count()  # tokens of the ack and reply inboxes
        self._closed = False
        self._connected = False
        try:
            self._call(self._connect(name, connect_timeout), timeout=connect_timeout + 10)
        except Exception:
            self._closed = True  # a bus that did not start: closing its client is not a disconnection to warn of
            with contextlib.suppress(Exception):  # whatever the failure, the client (connected or trying) closes
                self._call(self.nc.close(), timeout=5)
            self._stop_loop()
            raise

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self, name: str, timeout: float) -> None:
        async def on_error(exc: Exception) -> None:
            if self._connected:  # before the first connection, the one error below says it all
                log.warning("nats: %s", exc)

        async def on_disconnect() -> None:
            if self._connected and not self._closed:
                log.warning("nats: disconnected from %s", self.url)

        async def on_reconnect() -> None:
            log.warning("nats: reconnected to %s", self.url)
            for sub in self._subs:
                if sub.pull is not None:
                    sub.pull.again()

        self.nc = Client()
        servers = [s.strip() for s in self.url.split(",") if s.strip()]
        try:
            await asyncio.wait_for(
                self.nc.connect(
                    servers,
                    name=name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py sleeps floats; its hint says int
                    connect_timeout=min(5.0, timeout),  # type: ignore[arg-type]  # the same
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                ),
                timeout,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:  # __init__ closes the client with the loop
            reason = f" ({exc})" if str(exc) else ""
            raise BusError(f"HMS_BUS_URL: no NATS server answered at {self.url} within {timeout:g} s{reason}") from None
        self._connected = True
        self.js = self.nc.jetstream()
        # Publish acknowledgements come back on one inbox: many publishes in flight without a task,
        # a future and a timer each (what js.publish costs per message).
        self._ack_prefix = self.nc.new_inbox()
        await self.nc.subscribe(f"{self._ack_prefix}.*", cb=self._on_ack)
        self._reply_prefix = self.nc.new_inbox()  # and replies to requests on another
        await self.nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)
        config = api.StreamConfig(
            name=self.stream,
            subjects=list(self.event_subjects),
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            duplicate_window=120.0,
            num_replicas=self.replicas,  # durable consumers inherit the stream's replicas
        )
        try:
            await self._keep_stream(config)
        except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError):
            raise BusError(f"HMS_BUS_URL: the NATS server at {self.url} has no JetStream (start it with -js)") from None
        except nats.js.errors.APIError as exc:  # another stream holds these subjects, limits, permissions
            raise BusError(
                f"HMS_BUS_URL: JetStream at {self.url} cannot keep the stream {self.stream} "
                f"({', '.join(self.event_subjects)}): {exc.description}"
            ) from None

    async def _keep_stream(self, config: api.StreamConfig) -> None:
        """Make the event stream, or bring an existing one to our subjects and at least our replicas."""
        try:
            info = await self.js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await self.js.add_stream(config)
            return
        # An update never lowers the replicas an operator set (nats stream edit): only ever up to ours.
        config.num_replicas = max(info.config.num_replicas or 1, self.replicas)
        if (
            sorted(info.config.subjects or []) != sorted(self.event_subjects)
            or (info.config.num_replicas or 1) < self.replicas
        ):
            await self.js.update_stream(config)

    def is_event(self, pattern: str) -> bool:
        """Whether `pattern` reaches JetStream (durable, retried) rather than core NATS."""
        return any(overlaps(pattern, s) for s in self.event_subjects)

    # -- publishing -------------------------------------------------------------------------
    def _publish_event(self, event: Event) -> Future[None]:
        wire_headers = {**event.headers, "Nats-Msg-Id": event.id}
        if event.traceparent:
            wire_headers["traceparent"] = event.traceparent
        durable = self._durable.get(event.subject)
        if durable is None:
            durable = self._durable[event.subject] = any(matches(s, event.subject) for s in self.event_subjects)
        done: Future[None] = Future()
        if durable:  # answered on the ack inbox: registered before it can come
            token = str(next(self._seq))
            self._awaiting_ack[token] = (event, done)
            self._out(_DURABLE, event.subject, encode(event), f"{self._ack_prefix}.{token}", wire_headers, done)
        else:
            self._out(_PLAIN, event.subject, encode(event), "", wire_headers, done)
        return done

    def _out(
        self,
        kind: int,
        subject: str,
        payload: bytes,
        reply: str,
        headers: dict[str, str] | None,
        done: Future[Any] | None,
    ) -> None:
        """Queue a message for the loop to send: one loop wake-up per burst of messages, not one per message."""
        with self._outgoing_lock:
            self._outgoing.append((kind, subject, payload, reply, headers, done))
            wake = len(self._outgoing) == 1
        if wake:
            self._loop.call_soon_threadsafe(self._send_outgoing)

    def _send_outgoing(self) -> None:
        """On the loop: send every queued message; durable ones are acknowledged on the ack inbox."""
        with self._outgoing_lock:
            batch, self._outgoing = self._outgoing, []
        self._loop.create_task(self._send(batch))

    async def _send(self, batch: list[_Outgoing]) -> None:
        tokens = []
        for kind, subject, payload, reply, headers, done in batch:
            try:
                await self.nc.publish(subject, payload, reply=reply, headers=headers)
            except Exception as exc:
                if done is None:  # a reply: its requester times out
                    log.debug("reply to %s not sent: %r", subject, exc)
                    continue
                if kind == _DURABLE:
                    self._awaiting_ack.pop(reply.rsplit(".", 1)[-1], None)
                elif kind == _REQUEST:
                    self._awaiting_reply.pop(reply.rsplit(".", 1)[-1], None)
                what = (headers or {}).get("Nats-Msg-Id", "a request")
                done.set_exception(BusError(f"{subject}: broker did not take {what}: {exc!r}"))
                continue
            if kind == _DURABLE:
                tokens.append(reply.rsplit(".", 1)[-1])
            elif kind == _PLAIN and done is not None:
                done.set_result(None)
        if tokens:
            self._loop.call_later(PUBLISH_ACK_WAIT, self._ack_timeout, tokens)
        if self._awaiting_reply and time.monotonic() >= self._next_sweep:
            self._sweep_replies()

    def _sweep_replies(self) -> None:
        """Forget requests a second past their deadline: a reply dropped unread (`send_request`) whose answer never
        came would otherwise stay for the life of the process."""
        now = time.monotonic()
        self._next_sweep = now + 1.0
        for token, (_, _, deadline) in self._awaiting_reply.copy().items():  # other threads add and take meanwhile
            if deadline + 1.0 < now:
                self._awaiting_reply.pop(token, None)

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._awaiting_ack.pop(msg.subject.rsplit(".", 1)[-1], None)
        if entry is None or entry[1].done():
            return
        event, done = entry
        problem = ack_problem(msg, event.subject)
        if problem:
            done.set_exception(BusError(f"{event.subject}: broker did not take {event.id}: {problem}"))
        else:
            done.set_result(None)

    def _ack_timeout(self, tokens: list[str]) -> None:
        for token in tokens:
            entry = self._awaiting_ack.pop(token, None)
            if entry is not None and not entry[1].done():
                event, done = entry
                done.set_exception(
                    BusError(f"{event.subject}: broker did not confirm {event.id} within {PUBLISH_ACK_WAIT:g}s")
                )

    def send_request(
        self,
        subject: str,
        data: dict[str, Any],
        timeout: float = 5.0,
        *,
        headers: dict[str, str] | None = None,
        version: int = 1,
    ) -> Reply:
        event = self._envelope(subject, data, headers=headers, version=version)
        deadline = time.monotonic() + timeout
        local = self._responders.get(subject)

        def over_nats() -> Callable[[], Any]:
            wait = self._over_nats(subject, encode(event), event.headers or None, timeout, deadline)
            return lambda: self._reply_of(wait())

        if not local:
            return Reply(over_nats())
        # This process is a member of the group: it answers, as the in-process engine does.
        answer = self._pool.submit(respond, local[0].handler, event, self._validate)

        def result() -> Any:
            try:
                return answer.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise BusTimeout(subject, timeout) from None
            except Unverifiable:
                return over_nats()()  # this member cannot verify it: another member may, over NATS

        return Reply(result)

    def _over_nats(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        timeout: float,
        deadline: float | None = None,
    ) -> Callable[[], Msg]:
        """Send a request now; the call returned waits for its reply until `deadline` (`timeout` from now unless
        given). The reply comes to this connection's reply inbox and completes a future there: no task, asyncio
        future and timer per request (what nats-py's request costs). A reply nobody waits for any more is dropped
        when it comes, or swept from `_awaiting_reply` a second after its deadline."""
        until = time.monotonic() + timeout if deadline is None else deadline
        token = str(next(self._seq))
        done: Future[Msg] = Future()
        self._awaiting_reply[token] = (subject, done, until)
        self._out(_REQUEST, subject, payload, f"{self._reply_prefix}.{token}", headers, done)

        def wait() -> Msg:
            try:
                return done.result(max(0.0, until - time.monotonic()))
            except FutureTimeout:
                raise BusTimeout(subject, timeout) from None
            finally:
                self._awaiting_reply.pop(token, None)

        return wait

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._awaiting_reply.pop(msg.subject.rsplit(".", 1)[-1], None)
        if entry is None:
            return  # its requester has given up
        subject, done, _ = entry
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            done.set_exception(NoResponders(subject))
        else:
            done.set_result(msg)

    @staticmethod
    def _reply_of(msg: Msg) -> Any:
        body = json.loads(msg.data) if msg.data else None
        if msg.headers and CODE_HEADER in msg.headers:
            error = body.get("error") if isinstance(body, dict) else None
            raise ReplyError.from_dict(
                error or {"status": int(msg.headers[CODE_HEADER]), "title": msg.headers.get(ERROR_HEADER, "Error")}
            )
        return body

    def request_many(self, subject: str, data: dict[str, Any], timeout: float = 1.0) -> list[Any]:
        event = self._envelope(subject, data)
        return self._call(self._request_many(event, timeout), timeout=timeout + 5)

    async def _request_many(self, event: Event, timeout: float) -> list[Any]:
        replies: list[Any] = []
        inbox = self.nc.new_inbox()

        async def collect(msg: Msg) -> None:
            try:
                replies.append(self._reply_of(msg))
            except (ReplyError, ValueError):
                pass

        sub = await self.nc.subscribe(inbox, cb=collect)
        try:
            await self.nc.publish(event.subject, encode(event), reply=inbox)
            await asyncio.sleep(timeout)
        finally:
            await sub.unsubscribe()
        return replies

    # -- shared values ----------------------------------------------------------------------
    def update(self, bucket: str, key: str, change: Callable[[bytes | None], bytes], *, ttl: float) -> bytes:
        """A compare-and-set on the key's revision. It starts from what this process last wrote there (nothing, if
        that is older than `ttl`), not from a read: the usual update is one round trip, and a wrong guess (another
        process wrote since, or the value expired) fails the revision check, reads, and changes what it read.

        The write is a JetStream publish to the bucket's subject expecting the key's last revision (what nats-py's
        `KeyValue.update` sends), answered on the reply inbox as a request is."""
        self._check_open()
        if not KV_KEY.fullmatch(key):
            raise BusError(f"{bucket}: {key!r} is not a key-value key (letters, digits, - / _ = and inner dots)")
        try:
            try:
                return self._compare_and_set(bucket, key, change, ttl)
            except NoResponders:  # no stream takes the bucket's subjects: deleted under this process; made again
                self._buckets.pop(bucket, None)
                return self._compare_and_set(bucket, key, change, ttl)
        except (BusTimeout, NoResponders, TimeoutError, nats.errors.Error) as exc:  # JetStream away: a restart
            raise BusError(f"{bucket}: the key-value store is unavailable: {exc}") from None

    def _compare_and_set(self, bucket: str, key: str, change: Callable[[bytes | None], bytes], ttl: float) -> bytes:
        kv = self._buckets.get(bucket) or self._call(self._bucket(bucket, ttl), timeout=10)
        now = time.monotonic()
        old, revision = self._written.get((bucket, key), now) or (None, 0)  # 0: the key must not exist
        for _ in range(100):
            new = change(old)
            headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(revision)}
            reply = self._over_nats(f"$KV.{bucket}.{key}", new, headers, 5)()
            try:
                answer = json.loads(reply.data)
                error = answer.get("error")
            except (ValueError, AttributeError):
                raise BusError(f"{bucket}: the key-value store answered {reply.data[:200]!r}") from None
            if error is None:
                revision = answer["seq"]
                self._written.put((bucket, key), (new, revision), now + ttl, now)
                return new
            if error.get("err_code") not in (10071, 10164):  # not a wrong last revision
                raise BusError(f"{bucket}: the key-value store refused {key}: {error.get('description', error)}")
            old, revision = self._call(self._read(kv, key), timeout=10)
        raise BusError(f"{bucket}/{key}: changed by others 100 times in a row")

    @staticmethod
    async def _read(kv: Any, key: str) -> tuple[bytes | None, int]:
        """A key's value and revision; (None, the deletion's revision or 0) for one not there."""
        try:
            entry = await kv.get(key)
            return entry.value, entry.revision
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError) as gone:
            return None, getattr(gone.entry, "revision", None) or 0

    async def _bucket(self, bucket: str, ttl: float) -> Any:
        kv = self._buckets.get(bucket)
        if kv is None:
            try:
                kv = await self.js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                config = api.KeyValueConfig(bucket=bucket, ttl=ttl, history=1, replicas=self.replicas)
                kv = await self.js.create_key_value(config)  # another process making it at once: the same bucket
            self._buckets[bucket] = kv
        return kv

    # -- subscribing ------------------------------------------------------------------------
    def subscribe(
        self,
        subject: str,
        handler: Handler,
        queue: str | None = None,
        *,
        max_deliver: int = 5,
        backoff: Sequence[float] = DEFAULT_BACKOFF,
        dead_letter: DeadLetter | None = None,
    ) -> Subscription:
        options = self._options(subject, queue, max_deliver, backoff, dead_letter)
        sub = _NatsSubscription(self, subject, queue, handler)
        if self.is_event(subject):
            self._call(self._subscribe_stream(sub, handler, options), timeout=15)
        else:
            self._call(self._subscribe_core(sub, handler), timeout=15)
            if queue:  # a request names one subject: a member on a wildcard is only ever reached over NATS
                self._responders[subject] = (*self._responders.get(subject, ()), sub)
        self._subs.append(sub)
        return sub

    async def _subscribe_core(self, sub: _NatsSubscription, handler: Handler) -> None:
        async def on_message(msg: Msg) -> None:
            # Hand over to a worker thread at once: a slow handler never blocks the loop.
            self._pool.submit(self._answer, handler, msg)

        sub.sub = await self.nc.subscribe(sub.subject, queue=sub.queue or "", cb=on_message)

    def _answer(self, handler: Handler, msg: Msg) -> None:
        reply: Any = None
        error: ReplyError | None = None
        try:
            reply = respond(handler, decode(msg.subject, msg.data, msg.headers), self._validate)
        except Unverifiable as exc:
            self._forward(msg, exc)  # not ours to answer: on to another member of the group, which may verify it
            return
        except ReplyError as exc:
            error = exc
        except (ValueError, BusError) as exc:  # not JSON, or not an envelope
            error = ReplyError(400, "Bad request", str(exc))
        if not msg.reply:
            return
        if error is None:
            self._out(_REPLY, msg.reply, json.dumps(reply).encode(), "", None, None)
        else:
            body = json.dumps({"error": error.to_dict()}).encode()
            headers = {ERROR_HEADER: error.title, CODE_HEADER: str(error.status)}
            self._out(_REPLY, msg.reply, body, "", headers, None)

    def _forward(self, msg: Msg, exc: Unverifiable) -> None:
        """Publish a request this process cannot verify to its subject again, for another member to answer."""
        hops = int((msg.headers or {}).get(FORWARDED_HEADER, "0")) + 1
        if hops > MAX_HOPS or not msg.reply:
            log.error("dropped a request on %s after %d members could not verify it: %s", msg.subject, hops - 1, exc)
            return
        log.error("cannot verify a request on %s here; forwarding it (hop %d): %s", msg.subject, hops, exc)
        headers = {**(msg.headers or {}), FORWARDED_HEADER: str(hops)}
        self._out(_REPLY, msg.subject, msg.data, msg.reply, headers, None)

    async def _subscribe_stream(self, sub: _NatsSubscription, handler: Handler, options: SubscribeOptions) -> None:
        if options.queue:
            durable: str | None = consumer_name(options.queue)
            policy = api.DeliverPolicy.ALL  # a new durable catches up on what the stream holds
        else:
            durable, policy = None, api.DeliverPolicy.NEW
            sub.ephemeral = f"eph_{uuid.uuid4().hex[:16]}"
        config = api.ConsumerConfig(
            name=durable or sub.ephemeral,
            durable_name=durable,
            deliver_policy=policy,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            # Unlimited on the server: we count deliveries ourselves (delivery.decide dead-letters a failing one),
            # and a member that cannot verify a message must be able to hand it back however often it comes.
            max_deliver=-1,
            filter_subject=sub.subject,
            inactive_threshold=None if durable else 60.0,
        )
        try:
            info = await self.js.consumer_info(self.stream, str(config.name))
        except nats.js.errors.NotFoundError:
            info = await self.js.add_consumer(self.stream, config=config)
        if info.config.max_deliver not in (-1, None):  # made by an earlier version, which let the server stop
            info.config.max_deliver = -1
            await self.js.add_consumer(self.stream, config=info.config)  # a create of the same name: an update
        pull = _Pull(self, str(config.name), handler, options)
        sub.sub = await self.nc.subscribe(pull.inbox, cb=pull.arrive)
        sub.pull = pull
        sub.task = self._loop.create_task(pull.run())

    async def _deliver_batch(self, where: str, msgs: list[Msg], handler: Handler, options: SubscribeOptions) -> None:
        try:
            await self._deliver(msgs, handler, options)
        except Exception:  # keep consuming; what was not acked comes back after ack_wait
            log.exception("delivering a batch on %s failed", where)

    async def _deliver(self, msgs: list[Msg], handler: Handler, options: SubscribeOptions) -> None:
        """Hand one batch to the handler in one trip to a worker thread, in stream order, then settle each."""
        good: list[tuple[Msg, Event]] = []
        for msg in msgs:
            try:
                event = decode(msg.subject, msg.data, msg.headers, attempt=delivered(msg))
                self._validate(event)
            except (ContractError, BusError, ValueError) as exc:
                # A bad event is never handed to a handler and never retried: straight to dead letters.
                event = Event.create(
                    msg.subject,
                    {"raw": msg.data.decode(errors="replace")[:2000]},
                    event_id=(msg.headers or {}).get("Nats-Msg-Id"),
                )
                await self._give_up(msg, options, event, str(exc))
                continue
            good.append((msg, event))
        if not good:
            return
        errors = await self._loop.run_in_executor(self._pool, _run_all, handler, [e for _, e in good])
        for (msg, event), error in zip(good, errors, strict=True):
            outcome = decide(event, error, options)
            if outcome.verdict is Verdict.ACK:
                await msg.ack()
            elif outcome.verdict is Verdict.DEAD:
                await self._give_up(msg, options, event, outcome.error)
            else:
                await msg.nak(delay=outcome.delay)

    async def _give_up(self, msg: Msg, options: SubscribeOptions, event: Event, error: str) -> None:
        if options.dead_letter is None:
            log.error("dropped %s %s: %s", event.subject, event.id, error)
            await msg.term()
            return
        try:
            await self._loop.run_in_executor(self._pool, options.dead_letter, event, error)
        except Exception:  # not stored: leave it to the broker to deliver again later
            log.exception("dead-letter store failed for %s", event.id)
            await msg.nak(delay=options.delay(options.max_deliver))
            return
        await msg.term()

    async def _unsubscribe(self, sub: _NatsSubscription) -> None:
        if sub in self._responders.get(sub.subject, ()):
            self._responders[sub.subject] = tuple(s for s in self._responders[sub.subject] if s is not sub)
        if sub.task is not None:
            sub.task.cancel()
        if sub.sub is not None:
            try:
                await sub.sub.unsubscribe()
            except Exception as exc:  # already gone with the connection
                log.debug("unsubscribe %s: %r", sub.subject, exc)
        if sub.ephemeral:
            try:
                await self.js.delete_consumer(self.stream, sub.ephemeral)
            except Exception as exc:
                log.debug("delete consumer %s: %r", sub.ephemeral, exc)
        if sub in self._subs:
            self._subs.remove(sub)

    # -- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        for sub in list(self._subs):
            try:
                self._call(self._unsubscribe(sub), timeout=5)
            except Exception as exc:
                log.debug("closing %s: %r", sub.subject, exc)
        self._closed = True
        try:
            self._call(self.nc.close(), timeout=10)
        except Exception as exc:
            log.debug("closing nats: %r", exc)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._call(cancel_the_rest(), timeout=5)
        except Exception as exc:
            log.debug("stopping the nats loop: %r", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def _run_all(handler: Handler, events: list[Event]) -> list[Exception | None]:
    """Run a handler on each event in a worker thread; returns what each one raised, or None."""
    errors: list[Exception | None] = []
    for event in events:
        try:
            handler(event)
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors
