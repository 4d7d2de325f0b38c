"""The in-process engine: blinker signals fan out, worker threads run the handlers."""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Any

import blinker

from hms.contracts import Contracts

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
    respond,
)
from .delivery import ACKED, Verdict, decide
from .subjects import matches

log = logging.getLogger("hms.bus")
DUPLICATE_WINDOW_S = 120.0  # as the JetStream stream's duplicate_window
time_now = time.monotonic


_SETTLED: Future[None] = Future()
_SETTLED.set_result(None)


class _Settlement:
    """Completes a publish's future once every group has settled its delivery."""

    def __init__(self, future: Future[None]) -> None:
        self.future, self.pending = future, 1  # 1 = the publisher itself
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def add(self) -> None:
        with self.lock:
            self.pending += 1

    def done(self, error: BaseException | None = None) -> None:
        with self.lock:
            self.error = self.error or error
            self.pending -= 1
            finished = self.pending == 0
        if finished and not self.future.done():
            if self.error:
                self.future.set_exception(self.error)
            else:
                self.future.set_result(None)


class _Member(Subscription):
    def __init__(self, bus: MemoryBus, group: _Group, handler: Handler, options: SubscribeOptions) -> None:
        self.bus, self.group, self.handler, self.options = bus, group, handler, options
        self.subject, self.queue = group.pattern, options.queue

    def unsubscribe(self) -> None:
        self.bus._remove(self)


class _Group:
    """Every member subscribed to one pattern under one queue name; one of them gets each message."""

    def __init__(self, pattern: str, key: str) -> None:
        self.pattern, self.key = pattern, key
        self.members: list[_Member] = []
        self._next = itertools.count()

    def pick(self) -> _Member | None:
        members = self.members
        return members[next(self._next) % len(members)] if members else None

    def __call__(self, sender: Any, **kw: Any) -> None:
        sender._dispatch(self, kw["event"], kw.get("settlement"), kw.get("reply"))


class _Workers:
    """A fixed set of threads taking (function, arguments) from one queue: the delivery hand-off, kept cheap."""

    def __init__(self, count: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}_{i}", daemon=True) for i in range(count)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Any, *args: Any) -> None:
        if self._closed:
            raise RuntimeError("the workers are shut down")
        self._queue.put((fn, args))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None and not self._closed:
            fn, args = item
            try:
                fn(*args)
            except Exception:  # a delivery's own errors are handled inside it; this is a bug, not a retry
                log.exception("bus worker: %s failed", getattr(fn, "__name__", fn))

    def shutdown(self) -> None:
        """Stop taking work; what is queued is dropped (durable events stay in their outbox)."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)


class MemoryBus(Engine):
    """NATS semantics in one process; deliveries are retried with backoff, then dead-lettered."""

    def __init__(self, contracts: Contracts | None = None, *, workers: int = 8) -> None:
        self.contracts = contracts
        self._signals = blinker.Namespace()
        self._groups: dict[tuple[str, str], _Group] = {}
        self._by_subject: dict[str, list[blinker.NamedSignal]] = {}
        self._lock = threading.RLock()
        self._events = _Workers(workers, "hms-bus-event")
        self._requests = ThreadPoolExecutor(workers, thread_name_prefix="hms-bus-request")
        self._timers: list[tuple[float, int, Any]] = []
        self._timer_seq = itertools.count()
        self._timer_cv = threading.Condition()
        # Publishes inside the duplicate window, oldest first (insertion order = expiry order); a settled one keeps
        # only its id, so the window holds no events or futures for the garbage collector to walk.
        self._recent: OrderedDict[str, tuple[float, Future[None] | None]] = OrderedDict()
        self._values = Expiring()  # update()
        self._closed = False
        self._timer_thread = threading.Thread(target=self._run_timers, name="hms-bus-timers", daemon=True)
        self._timer_thread.start()

    # -- publishing -------------------------------------------------------------------------
    def _publish_event(self, event: Event) -> Future[None]:
        with self._lock:
            first = self._recent_publish(event.id)
            if first is not None:
                return first  # like JetStream's duplicate window: the same id is delivered once
            future: Future[None] = Future()
            self._recent[event.id] = (time_now() + DUPLICATE_WINDOW_S, future)
        future.add_done_callback(partial(self._settled, event.id))
        settlement = _Settlement(future)
        for signal in self._signals_for(event.subject):
            signal.send(self, event=event, settlement=settlement)
        settlement.done()
        return future

    def _recent_publish(self, event_id: str) -> Future[None] | None:
        """The publish of `event_id` inside the duplicate window, if any (caller holds the lock)."""
        now, recent = time_now(), self._recent
        while recent:  # expire from the oldest end: every entry lives the same window, so order is expiry order
            oldest = next(iter(recent.values()))
            if oldest[0] > now:
                break
            recent.popitem(last=False)
        entry = recent.get(event_id)
        if entry is None:
            return None
        return entry[1] or _SETTLED

    def _settled(self, event_id: str, future: Future[None]) -> None:
        with self._lock:
            entry = self._recent.get(event_id)
            if entry is None or entry[1] is not future:
                return
            if future.exception() is None:
                self._recent[event_id] = (entry[0], None)
            else:  # a delivery that could not settle (its dead letter was not stored) must be deliverable again
                del self._recent[event_id]

    def send_request(
        self,
        subject: str,
        data: dict[str, Any],
        timeout: float = 5.0,
        *,
        headers: dict[str, str] | None = None,
        version: int = 1,
    ) -> Reply:
        replies = self._ask(subject, data, headers, version)
        if not replies:
            raise NoResponders(subject)
        deadline = time.monotonic() + timeout

        def result() -> Any:
            done = _first_done(replies, max(0.0, deadline - time.monotonic()))
            if done is None:
                raise BusTimeout(subject, timeout)
            return done.result()

        return Reply(result)

    def request_many(self, subject: str, data: dict[str, Any], timeout: float = 1.0) -> list[Any]:
        replies = self._ask(subject, data, None)
        deadline = time.monotonic() + timeout
        out = []
        for f in replies:
            try:
                out.append(f.result(max(0.0, deadline - time.monotonic())))
            except (FutureTimeout, BusError):
                continue
        return out

    def _ask(
        self, subject: str, data: dict[str, Any], headers: dict[str, str] | None, version: int = 1
    ) -> list[Future[Any]]:
        event = self._envelope(subject, data, headers=headers, version=version)
        replies: list[Future[Any]] = []
        for signal in self._signals_for(subject):
            signal.send(self, event=event, reply=replies)
        return replies

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
        with self._lock:
            key = (subject, queue or f"_solo.{next(self._timer_seq)}")
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(subject, key[1])
                self._signals.signal(subject).connect(group, weak=False)
                self._by_subject.clear()
            member = _Member(self, group, handler, options)
            group.members.append(member)
        return member

    def _remove(self, member: _Member) -> None:
        with self._lock:
            group = member.group
            if member in group.members:
                group.members.remove(member)
            if not group.members and self._groups.get((group.pattern, group.key)) is group:
                del self._groups[(group.pattern, group.key)]
                self._signals.signal(group.pattern).disconnect(group)
                self._by_subject.clear()

    def _signals_for(self, subject: str) -> list[blinker.NamedSignal]:
        signals = self._by_subject.get(subject)
        if signals is None:
            with self._lock:
                patterns = {p for p, _ in self._groups if matches(p, subject)}
                signals = self._by_subject[subject] = [self._signals.signal(p) for p in sorted(patterns)]
        return signals

    # -- delivering -------------------------------------------------------------------------
    def _dispatch(
        self, group: _Group, event: Event, settlement: _Settlement | None, reply: list[Future[Any]] | None
    ) -> None:
        member = group.pick()
        if member is None:
            return
        if reply is not None:
            future: Future[Any] = Future()
            reply.append(future)
            self._requests.submit(self._answer, member, event, future)
            return
        if settlement is not None:
            settlement.add()
        self._events.submit(self._deliver, group, member, event, settlement)

    def _answer(self, member: _Member, event: Event, future: Future[Any]) -> None:
        try:
            future.set_result(respond(member.handler, event, self._validate))
        except ReplyError as exc:
            future.set_exception(exc)

    def _deliver(self, group: _Group, member: _Member, event: Event, settlement: _Settlement | None) -> None:
        options = member.options
        try:
            # No contract check here: in one process the publisher (or the outbox) checked it with these contracts.
            member.handler(event)
            outcome = ACKED
        except Exception as exc:
            outcome = decide(event, exc, options)
        if outcome.verdict is Verdict.ACK:
            if settlement is not None:
                settlement.done()
        elif outcome.verdict is Verdict.DEAD:
            self._dead_letter(options, event, outcome.error, settlement)
        else:
            retry = Event(**{**_fields(event), "attempt": event.attempt + 1})
            self._later(outcome.delay, self._redeliver, group, member, retry, settlement)

    def _redeliver(self, group: _Group, member: _Member, event: Event, settlement: _Settlement | None) -> None:
        # Like a JetStream redelivery: any live member of the group may take it.
        live = member if member in group.members else group.pick()
        if live is None or self._closed:
            if settlement is not None:
                settlement.done(BusError(f"{event.subject}: no subscriber left in group {group.key}"))
            return
        self._events.submit(self._deliver, group, live, event, settlement)

    def _dead_letter(self, options: SubscribeOptions, event: Event, error: str, settlement: _Settlement | None) -> None:
        failure: BaseException | None = None
        if options.dead_letter is not None:
            try:
                options.dead_letter(event, error)
            except Exception as exc:  # unsettled: the publisher keeps the event and sends it again
                log.exception("dead-letter store failed for %s", event.id)
                failure = exc
        else:
            log.error("dropped %s %s: %s", event.subject, event.id, error)
        if settlement is not None:
            settlement.done(failure)

    # -- timers -----------------------------------------------------------------------------
    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        with self._timer_cv:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), (fn, args)))
            self._timer_cv.notify()

    def _run_timers(self) -> None:
        with self._timer_cv:
            while not self._closed:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, (fn, args) = heapq.heappop(self._timers)
                    try:
                        fn(*args)
                    except RuntimeError:  # executor shut down during close()
                        return
                self._timer_cv.wait(self._timers[0][0] - now if self._timers else None)

    # -- shared values ----------------------------------------------------------------------
    def update(self, bucket: str, key: str, change: Callable[[bytes | None], bytes], *, ttl: float) -> bytes:
        self._check_open()
        with self._lock:
            now = time.monotonic()
            new = change(self._values.get((bucket, key), now))
            self._values.put((bucket, key), new, now + ttl, now)
            return new

    def close(self) -> None:
        with self._timer_cv:
            self._closed = True
            self._timer_cv.notify()
        self._events.shutdown()
        self._requests.shutdown(wait=True, cancel_futures=True)
        self._timer_thread.join(timeout=5)


def _fields(event: Event) -> dict[str, Any]:
    return {k: getattr(event, k) for k in Event.__slots__}


def _first_done(futures: list[Future[Any]], timeout: float) -> Future[Any] | None:
    """The first future to finish (successful replies preferred), or None at the timeout."""
    if len(futures) == 1:  # the usual case, one responder: no waiter to set up
        try:
            futures[0].exception(timeout)
        except FutureTimeout:
            return None
        return futures[0]
    from concurrent.futures import FIRST_COMPLETED, wait

    deadline = time.monotonic() + timeout
    pending = set(futures)
    first_error: Future[Any] | None = None
    while pending:
        done, pending = wait(pending, max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
        if not done:
            break
        for f in done:
            if f.exception() is None:
                return f
            first_error = first_error or f
    return first_error
