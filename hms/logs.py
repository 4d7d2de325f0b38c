"""One log format for the whole mesh: JSON lines carrying claim and event ids."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from hms.bus.tracing import log_context

FIELDS = ("claim_id", "event_id", "trace_id", "citizen", "service")


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = getattr(record, "hms_context", {})
        for key in FIELDS:
            value = getattr(record, key, None) or context.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def _with_context(factory: Any) -> Any:
    """A log record factory that stamps each record with the bound fields (claim, event, trace) of its context."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = factory(*args, **kwargs)
        record.hms_context = log_context.get()  # beside, not instead of, fields given with extra=
        return record

    make._hms = True  # type: ignore[attr-defined]
    return make


def configure(level: str = "INFO") -> None:
    """Write every log record as a JSON line on stderr (once per process); `hms` loggers at `level`."""
    root = logging.getLogger()
    if not any(getattr(h, "_hms", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._hms = True  # type: ignore[attr-defined]
        root.addHandler(handler)  # also keeps waitress from adding a plain-text handler of its own
        root.setLevel(min(root.level or logging.WARNING, logging.WARNING))
    if not getattr(logging.getLogRecordFactory(), "_hms", False):
        logging.setLogRecordFactory(_with_context(logging.getLogRecordFactory()))
    logging.getLogger("hms").setLevel(level)
