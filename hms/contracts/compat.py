"""Contract evolution: would a changed schema break consumers written against the previous one?

A consumer of version N validates and reads what the previous schema promised, so a new schema of the same
version must accept nothing the old one refused: every event valid under the new schema must be valid under
the old. Anything looser (a field dropped from `required`, a new field where unknown fields were refused, a
wider type, enum or range) needs a new version (a new file, `<subject>.v<N+1>.json`).
"""

from __future__ import annotations

import json
from typing import Any


def _types(schema: dict[str, Any]) -> set[str]:
    t = schema.get("type")
    return set(t) if isinstance(t, list) else {t} if t else set()


def breaking_changes(old: dict[str, Any], new: dict[str, Any], path: str = "") -> list[str]:
    """What in `new` would break consumers of `old`, as readable lines (empty when compatible)."""
    where = path or "(message)"
    problems: list[str] = []
    if _types(new) - _types(old) and _types(old):
        problems.append(f"{where}: type widened from {sorted(_types(old))} to {sorted(_types(new))}")
    if "enum" in old and (
        "enum" not in new or not {json.dumps(v) for v in new["enum"]} <= {json.dumps(v) for v in old["enum"]}
    ):
        problems.append(f"{where}: enum widened")
    for key, stricter in (
        ("minimum", max),
        ("minLength", max),
        ("minItems", max),
        ("maximum", min),
        ("maxLength", min),
        ("maxItems", min),
    ):
        if key in old and (key not in new or stricter(old[key], new[key]) != new[key]):
            problems.append(f"{where}: {key} relaxed from {old[key]} to {new.get(key, 'none')}")
    if "pattern" in old and new.get("pattern") != old["pattern"]:
        problems.append(f"{where}: pattern changed from {old['pattern']!r} to {new.get('pattern')!r}")
    if "object" in _types(old):
        missing = sorted(set(old.get("required", [])) - set(new.get("required", [])))
        problems += [f"{path + '.' if path else ''}{m}: no longer required" for m in missing]
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        if old.get("additionalProperties") is False:
            if new.get("additionalProperties") is not False:
                problems.append(f"{where}: unknown fields now allowed")
            problems += [
                f"{path + '.' if path else ''}{k}: new field, which consumers refuse"
                for k in sorted(set(new_props) - set(old_props))
            ]
        for name in sorted(set(old_props) & set(new_props)):
            problems += breaking_changes(old_props[name], new_props[name], f"{path + '.' if path else ''}{name}")
    if "array" in _types(old) and isinstance(old.get("items"), dict):
        problems += breaking_changes(old["items"], new.get("items", {}), f"{path}[]")
    return problems


def check(locked: dict[str, dict[str, Any]], current: dict[str, dict[str, Any]]) -> list[str]:
    """Every breaking change between the locked contracts and the current ones, by `<subject>.v<N>`."""
    problems = []
    for name, old in sorted(locked.items()):
        if name not in current:
            problems.append(f"{name}: removed (consumers of this version still exist)")
            continue
        problems += [f"{name}: {p}" for p in breaking_changes(old, current[name])]
    return problems
