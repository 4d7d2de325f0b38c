"""The bus interface both engines implement, and the event envelope."""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hms.contracts import ContractError, Contracts

from .subjects import check_subject

SPECVERSION = "1.0"
TYPE_PREFIX = "gov.hms."
DEFAULT_BACKOFF: tuple[float, ...] = (0.1, 0.5, 2.0, 10.0, 30.0)


class BusError(Exception):
    """Base class of every bus error."""


class NoResponders(BusError):
    """A request found nobody serving its subject."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders for {subject!r}")
        self.subject = subject


class BusTimeout(BusError):
    """A request got no reply in time."""

    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(f"no reply on {subject!r} within {timeout:g}s")
        self.subject = subject


class Refused(BusError):
    """A message outside the mesh policy (HMS-SYS-AUTH) or without a valid service token: never delivered or retried."""


class Unverifiable(BusError):
    """A message signed by a key this process does not know. Another member may know it (a key it has not learned
    yet, or a process of another mesh on the same NATS), so this process never refuses or dead-letters it: an event
    goes back for redelivery, a request on to another member of the group."""


class ReplyError(BusError):
    """A responder refused a request; carried back to the requester as a problem."""

    def __init__(self, status: int, title: str, detail: str = "", field: str | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.field = status, title, detail or title, field

    def to_dict(self) -> dict[str, Any]:
        """The error as it travels in a reply."""
        return {"status": self.status, "title": self.title, "detail": self.detail, "field": self.field}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReplyError:
        """Rebuild the error on the requester's side."""
        return cls(int(d.get("status", 500)), str(d.get("title", "Error")), str(d.get("detail", "")), d.get("field"))


def now_iso() -> str:
    """The current UTC time as RFC 3339 with microseconds."""
    return iso(datetime.now(UTC))


def iso(dt: datetime) -> str:
    """RFC 3339 text of an aware datetime, in UTC with a Z."""
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Event:
    """One CloudEvents 1.0 envelope as a handler receives it."""

    subject: str
    id: str
    source: str
    type: str
    time: str
    data: dict[str, Any]
    traceparent: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    attempt: int = 1

    @classmethod
    def create(
        cls,
        subject: str,
        data: dict[str, Any],
        *,
        source: str = "hms",
        event_id: str | None = None,
        time: str | None = None,
        version: int = 1,
        traceparent: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Event:
        """A new envelope for `data` on `subject`."""
        return cls(
            subject=subject,
            id=event_id or str(uuid.uuid4()),
            source=source,
            type=f"{TYPE_PREFIX}{subject}.v{version}",
            time=time or now_iso(),
            data=data,
            traceparent=traceparent,
            headers=dict(headers or {}),
        )

    @property
    def version(self) -> int:
        """The contract version named by the envelope's type."""
        suffix = self.type.rsplit(".", 1)[-1]
        return int(suffix[1:]) if suffix[:1] == "v" and suffix[1:].isdigit() else 1

    def to_dict(self) -> dict[str, Any]:
        """The envelope as JSON-ready CloudEvents attributes."""
        d: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": self.data,
        }
        if self.traceparent:
            d["traceparent"] = self.traceparent
        return d

    @classmethod
    def from_dict(
        cls, subject: str, d: dict[str, Any], *, headers: dict[str, str] | None = None, attempt: int = 1
    ) -> Event:
        """Rebuild an envelope received from the wire; raises BusError when it is not one."""
        try:
            return cls(
                subject=subject,
                id=str(d["id"]),
                source=str(d["source"]),
                type=str(d["type"]),
                time=str(d["time"]),
                data=d["data"],
                traceparent=d.get("traceparent"),
                headers=dict(headers or {}),
                attempt=attempt,
            )
        except (KeyError, TypeError) as exc:
            raise BusError(f"{subject}: not a CloudEvents envelope (missing {exc})") from exc


Handler = Callable[[Event], Any]


def respond(handler: Handler, event: Event, validate: Callable[[Event], None]) -> Any:
    """Run a responder for both engines; every failure becomes the ReplyError its requester receives."""
    try:
        validate(event)
        return handler(event)
    except (ReplyError, Unverifiable):
        raise
    except Refused as exc:
        raise ReplyError(403, "Forbidden", str(exc)) from None
    except ContractError as exc:
        raise ReplyError(422, "Invalid request", str(exc), exc.field) from None
    except Exception as exc:  # a responder's bug must not hang or crash the requester
        logging.getLogger("hms.bus").exception("responder on %s failed", event.subject)
        raise ReplyError(500, "Internal error", f"{type(exc).__name__} in responder") from None


DeadLetter = Callable[[Event, str], None]


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """Delivery options; the NATS engine maps them to max_deliver and backoff."""

    queue: str | None = None
    max_deliver: int = 5
    backoff: Sequence[float] = DEFAULT_BACKOFF
    dead_letter: DeadLetter | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait before delivery number `attempt + 1`."""
        if not self.backoff:
            return 0.0
        return float(self.backoff[min(attempt - 1, len(self.backoff) - 1)])


class Subscription(ABC):
    """A handle on one subscription."""

    subject: str
    queue: str | None

    @abstractmethod
    def unsubscribe(self) -> None:
        """Stop receiving messages."""


class Reply:
    """A request on its way (`Bus.send_request`): `result()` waits for its answer; a later call returns (or raises)
    what the first did, without waiting or sending again (an engine's wait may send: a request its own member could
    not verify goes on over NATS)."""

    __slots__ = ("_wait", "_outcome")

    def __init__(self, wait: Callable[[], Any]) -> None:
        self._wait = wait
        self._outcome: tuple[bool, Any] | None = None  # (True, the answer) or (False, the error)

    def result(self) -> Any:
        if self._outcome is None:
            try:
                self._outcome = (True, self._wait())
            except Exception as exc:
                self._outcome = (False, exc)
        answered, value = self._outcome
        if answered:
            return value
        raise value


class Bus(ABC):
    """Publish/subscribe with queue groups and request/reply, NATS semantics."""

    @abstractmethod
    def publish(
        self,
        subject: str,
        data: dict[str, Any],
        *,
        event_id: str | None = None,
        source: str = "hms",
        time: str | None = None,
        traceparent: str | None = None,
        headers: dict[str, str] | None = None,
        checked: bool = False,
    ) -> Future[None]:
        """Send an event; returns at once with a future that completes when the bus holds it safely.

        `checked`: the data met its contract where it was written (the outbox checks each event in the
        transaction that emits it), so publishing does not check it again; consumers in other processes do.
        """

    @abstractmethod
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
        """Call `handler(event)` for each message on `subject` (wildcards allowed); its return answers requests."""

    def request(
        self,
        subject: str,
        data: dict[str, Any],
        timeout: float = 5.0,
        *,
        headers: dict[str, str] | None = None,
        version: int = 1,
    ) -> Any:
        """Send a request under version `version` of its contract; returns the reply's data.

        Raises NoResponders, BusTimeout or ReplyError.
        """
        return self.send_request(subject, data, timeout, headers=headers, version=version).result()

    @abstractmethod
    def send_request(
        self,
        subject: str,
        data: dict[str, Any],
        timeout: float = 5.0,
        *,
        headers: dict[str, str] | None = None,
        version: int = 1,
    ) -> Reply:
        """Send a request now and return at once: `result()` then waits for the reply, the timeout counted from
        now, and returns or raises what `request` would (NoResponders may also come at once). The caller may do
        other work meanwhile, or drop the reply unread."""

    @abstractmethod
    def request_many(self, subject: str, data: dict[str, Any], timeout: float = 1.0) -> list[Any]:
        """Send a request to every responder and gather the replies that arrive within `timeout`."""

    @abstractmethod
    def update(self, bucket: str, key: str, change: Callable[[bytes | None], bytes], *, ttl: float) -> bytes:
        """Replace a small value shared by every process on the bus with `change(old)` (None when there is none),
        atomically: a concurrent update by another process makes this one read again and call `change` again.
        A value not updated for `ttl` seconds is gone. Returns the new value. (NATS: a key-value bucket.)"""

    @abstractmethod
    def close(self) -> None:
        """Stop delivering and release every resource."""


class Expiring:
    """What `Bus.update` keeps per (bucket, key): a value until a monotonic time. Expired values are never returned,
    and are forgotten whenever twice as many are kept as after the last forgetting: memory stays bounded and a write
    costs the same however many keys are alive."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], tuple[Any, float]] = {}
        self._limit = 1024

    def get(self, key: tuple[str, str], now: float) -> Any:
        item = self._items.get(key)
        return item[0] if item is not None and item[1] > now else None

    def put(self, key: tuple[str, str], value: Any, until: float, now: float) -> None:
        self._items[key] = (value, until)
        if len(self._items) > self._limit:
            self._items = {k: v for k, v in self._items.items() if v[1] > now}
            self._limit = max(1024, 2 * len(self._items))


class Engine(Bus):
    """What both engines do the same way: the checks every publish, request and subscription goes through."""

    contracts: Contracts | None
    _closed: bool

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("the bus is closed")

    def _validate(self, event: Event) -> None:
        if self.contracts is not None:
            self.contracts.validate(event.subject, event.data, event.version)

    def publish(self, subject: str, data: dict[str, Any], *, checked: bool = False, **fields: Any) -> Future[None]:
        # `fields` are Bus.publish's envelope keywords (event_id, source, time, traceparent, headers)
        return self._publish_event(self._envelope(subject, data, checked=checked, **fields))

    @abstractmethod
    def _publish_event(self, event: Event) -> Future[None]:
        """Hand a checked envelope to the engine; the future completes when the bus holds it safely."""

    def _envelope(self, subject: str, data: dict[str, Any], *, checked: bool = False, **fields: Any) -> Event:
        """A checked envelope for an outgoing message: a valid subject, an open bus, data that meets its contract
        (unless the caller checked it already: `checked`)."""
        check_subject(subject)
        self._check_open()
        event = Event.create(subject, data, **fields)
        if not checked:
            self._validate(event)
        return event

    def _options(
        self,
        subject: str,
        queue: str | None,
        max_deliver: int,
        backoff: Sequence[float],
        dead_letter: DeadLetter | None,
    ) -> SubscribeOptions:
        """Checked subscription options: a valid pattern, at least one delivery, an open bus."""
        check_subject(subject, pattern=True)
        if max_deliver < 1:
            raise ValueError("max_deliver must be at least 1")
        self._check_open()
        return SubscribeOptions(queue, max_deliver, tuple(backoff), dead_letter)


class BusWrapper(Bus):
    """A bus around another one, passing everything through; subclasses add what they check or count."""

    def __init__(self, inner: Bus) -> None:
        self.inner = inner
        self.contracts = getattr(inner, "contracts", None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # engine extras (js, _call, ...) stay reachable

    def publish(self, subject: str, data: dict[str, Any], **kw: Any) -> Future[None]:
        return self.inner.publish(subject, data, **kw)

    def subscribe(self, subject: str, handler: Handler, queue: str | None = None, **kw: Any) -> Subscription:
        return self.inner.subscribe(subject, handler, queue, **kw)

    def send_request(self, subject: str, data: dict[str, Any], timeout: float = 5.0, **kw: Any) -> Reply:
        return self.inner.send_request(subject, data, timeout, **kw)

    def request_many(self, subject: str, data: dict[str, Any], timeout: float = 1.0) -> list[Any]:
        return self.inner.request_many(subject, data, timeout)

    def update(self, bucket: str, key: str, change: Callable[[bytes | None], bytes], *, ttl: float) -> bytes:
        return self.inner.update(bucket, key, change, ttl=ttl)

    def close(self) -> None:
        self.inner.close()
