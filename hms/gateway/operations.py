"""What operators ask the services for over the bus: their dead letters, and replaying one.

Each service with consumers answers `<service>.deadletters.list` and `<service>.deadletters.replay` for the
dead letters in its own database, so a gateway in a process of its own sees what the embedded one sees.
"""

from __future__ import annotations

from typing import Any

from hms.bus import Bus, BusError


def dead_letters(bus: Bus, services: list[dict[str, Any]], timeout: float) -> tuple[list[dict[str, Any]], list[str]]:
    """The dead letters of the discovered `services` that consume events, each with its `ref` SERVICE:ID; and the
    services that did not answer."""
    found: list[dict[str, Any]] = []
    silent: list[str] = []
    for name in sorted({s["name"] for s in services if s.get("subscribes")}):
        try:
            items = bus.request(f"{name}.deadletters.list", {}, timeout)["items"]
        except BusError as exc:
            silent.append(f"{name} ({exc})")
            continue
        found += [{**d, "service": name, "ref": f"{name}:{d['id']}"} for d in items]
    return found, silent


def parse_ref(ref: str) -> tuple[str, int]:
    """SERVICE:NUMBER as (service, number); ValueError naming what is wrong."""
    name, _, number = ref.partition(":")
    if not name or not number.isdigit() or not name.isidentifier():
        raise ValueError(f"{ref!r}: expected SERVICE:NUMBER, e.g. ach:3")
    return name, int(number)


def replay(bus: Bus, ref: str, timeout: float) -> None:
    """Hand dead letter SERVICE:NUMBER to its consumer again; raises ReplyError (404, or 409 with the handler's
    error) or BusError when the service does not answer."""
    name, number = parse_ref(ref)
    bus.request(f"{name}.deadletters.replay", {"id": number}, timeout)
