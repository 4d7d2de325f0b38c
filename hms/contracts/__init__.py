"""JSON Schema contracts, one file per subject and version, compiled once."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema

HERE = Path(__file__).parent
FILE_NAME = re.compile(r"(?P<subject>[a-z0-9_.]+)\.v(?P<version>\d+)\.json")
# Subjects of the bus's own plumbing (service discovery, reply inboxes) carry no contract.
EXEMPT_PREFIXES = ("$", "_INBOX.")


class ContractError(ValueError):
    """A message that breaks its subject's contract, naming the subject and the field."""

    def __init__(self, subject: str, field: str, message: str) -> None:
        super().__init__(f"{subject}: {field or '(message)'}: {message}")
        self.subject, self.field, self.message = subject, field, message


def _describe(exc: fastjsonschema.JsonSchemaValueException, data: Any) -> tuple[str, str]:
    """The dotted field a validation error is about, and a plain message."""
    path = [str(p) for p in (exc.path or [])[1:]]
    node = data
    for p in path:
        node = node.get(p) if isinstance(node, dict) else None
    if exc.rule == "required" and isinstance(node, dict):
        missing = [k for k in exc.rule_definition if k not in node]
        return ".".join(path + missing[:1]), "is required"
    if exc.rule == "additionalProperties" and isinstance(node, dict):
        allowed = (exc.definition or {}).get("properties", {})
        extra = sorted(k for k in node if k not in allowed)
        return ".".join(path + extra[:1]), "is not an allowed field"
    message = exc.message
    prefix = "data." + ".".join(path) if path else "data"
    if message.startswith(prefix):
        message = message[len(prefix) :].strip()
    return ".".join(path), message


class Contracts:
    """Every contract in a directory, keyed by subject and version."""

    def __init__(self, directory: Path = HERE, *, strict: bool = True) -> None:
        self.strict = strict
        self.schemas: dict[tuple[str, int], dict[str, Any]] = {}
        self._validators: dict[tuple[str, int], Callable[[Any], Any]] = {}
        for path in sorted(directory.glob("*.json")):
            m = FILE_NAME.fullmatch(path.name)
            if not m:
                raise ValueError(f"contract file {path.name}: expected <subject>.v<N>.json")
            key = (m["subject"], int(m["version"]))
            schema = json.loads(path.read_text())
            self.schemas[key] = schema
            self._validators[key] = fastjsonschema.compile(schema)

    def subjects(self) -> list[str]:
        """Every subject that has a contract."""
        return sorted({s for s, _ in self.schemas})

    def validate(self, subject: str, data: Any, version: int = 1) -> None:
        """Raise ContractError when `data` breaks the contract of `subject` at `version`."""
        if subject.startswith(EXEMPT_PREFIXES):
            return
        validator = self._validators.get((subject, version))
        if validator is None:
            if self.strict:
                raise ContractError(subject, "", f"no contract for version {version} of this subject")
            return
        try:
            validator(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            field, message = _describe(exc, data)
            raise ContractError(subject, field, message) from None
