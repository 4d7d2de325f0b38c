"""W3C trace context that follows a claim from the HTTP request through every event, and the log fields."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")  # fullmatch: `$` allows a final \n
# The fields every log line of this thread of work carries (claim_id, event_id, trace_id).
log_context: ContextVar[dict[str, Any]] = ContextVar("hms_log_context", default={})  # noqa: B039


def new_traceparent(trace_id: str | None = None) -> str:
    """A traceparent for a new span, in a new trace unless `trace_id` is given."""
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid traceparent header, else None."""
    m = TRACEPARENT.fullmatch(traceparent or "")
    return m.group(1) if m and m.group(1) != "0" * 32 else None


def child_of(traceparent: str | None) -> str:
    """A traceparent continuing the trace of `traceparent` (or starting one when it is missing or invalid)."""
    return new_traceparent(trace_id(traceparent))


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block."""
    token = log_context.set({**log_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        log_context.reset(token)
