"""Eligibility rules as data: a versioned file of small named rules, each with a reason code."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

DEFAULT_RULES = Path(__file__).with_name("rules.json")


class RulesFileError(ValueError):
    """A rules file that cannot be used, naming the file and the entry."""


@dataclass(frozen=True)
class Application:
    """What the rules look at: the claim's facts and the citizen's history."""

    separation_reason: str
    weeks_worked: int
    base_wages: Decimal
    has_open_claim: bool


@dataclass(frozen=True)
class Rule:
    """A named business rule; `is_broken` says whether an application breaks it."""

    code: str
    explain: str

    def is_broken(self, app: Application) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class SeparationReason(Rule):
    eligible: frozenset[str] = frozenset()

    def is_broken(self, app: Application) -> bool:
        return app.separation_reason not in self.eligible


@dataclass(frozen=True)
class MinWeeksWorked(Rule):
    min: int = 0

    def is_broken(self, app: Application) -> bool:
        return app.weeks_worked < self.min


@dataclass(frozen=True)
class MinBaseWages(Rule):
    min: Decimal = Decimal(0)

    def is_broken(self, app: Application) -> bool:
        return app.base_wages < self.min


@dataclass(frozen=True)
class OneOpenClaim(Rule):
    def is_broken(self, app: Application) -> bool:
        return app.has_open_claim


# The `kind` of a rules-file entry, and how its parameters are read from JSON.
KINDS: dict[str, tuple[type[Rule], dict[str, Callable[[Any], Any]]]] = {
    "separation_reason": (SeparationReason, {"eligible": frozenset}),
    "min_weeks_worked": (MinWeeksWorked, {}),
    "min_base_wages": (MinBaseWages, {"min": lambda v: Decimal(str(v))}),
    "one_open_claim": (OneOpenClaim, {}),
}


@dataclass(frozen=True)
class RuleSet:
    """A version of the rules and the benefit amount they grant."""

    version: str
    amount: Decimal
    rules: tuple[Rule, ...]

    def evaluate(self, app: Application) -> list[str]:
        """The reason codes of every broken rule (empty means eligible)."""
        return [r.code for r in self.rules if r.is_broken(app)]

    def names_open_claim(self, code: str) -> bool:
        """Whether `code` is the one-open-claim rule's (its denial points at the claim already open)."""
        return any(isinstance(r, OneOpenClaim) and r.code == code for r in self.rules)

    def explain(self, code: str) -> str:
        """The plain-language sentence for a reason code."""
        return next((r.explain for r in self.rules if r.code == code), code)

    @classmethod
    def load(cls, path: str | Path | None = None) -> RuleSet:
        """Read and check a rules file (the shipped defaults when `path` is empty)."""
        path = Path(path or DEFAULT_RULES)
        try:
            doc = json.loads(path.read_text())
            version, amount = str(doc["version"]), Decimal(str(doc["amount"]))
            entries = doc["rules"]
        except (OSError, ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise RulesFileError(f"{path}: {type(exc).__name__}: {exc}") from None
        if amount < 1:
            raise RulesFileError(f"{path}: amount must be at least 1")
        rules = []
        for i, entry in enumerate(entries):
            if entry.get("kind") not in KINDS:
                raise RulesFileError(f"{path}: rules[{i}].kind {entry.get('kind')!r} is not one of {sorted(KINDS)}")
            kind, readers = KINDS[entry["kind"]]
            try:
                params = {k: readers.get(k, lambda v: v)(v) for k, v in entry.items() if k != "kind"}
                rules.append(kind(**params))
            except (TypeError, ValueError, InvalidOperation) as exc:
                raise RulesFileError(f"{path}: rules[{i}]: {type(exc).__name__}: {exc}") from None
        return cls(version, amount, tuple(rules))
