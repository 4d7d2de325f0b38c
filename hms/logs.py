"""One log format for the whole mesh: JSON lines carrying claim and event ids."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

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
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "INFO") -> None:
    """Write every log record as a JSON line on stderr (once per process); `hms` loggers at `level`."""
    root = logging.getLogger()
    if not any(getattr(h, "_hms", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._hms = True  # type: ignore[attr-defined]
        root.addHandler(handler)  # also keeps waitress from adding a plain-text handler of its own
        root.setLevel(min(root.level or logging.WARNING, logging.WARNING))
    logging.getLogger("hms").setLevel(level)
