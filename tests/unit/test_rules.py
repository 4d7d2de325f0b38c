import json
from decimal import Decimal
from pathlib import Path

import pytest

from hms.svc.rules import Application, RuleSet, RulesFileError


def application(**kw: object) -> Application:
    base = {
        "separation_reason": "laid_off",
        "weeks_worked": 40,
        "base_wages": Decimal("31200"),
        "has_open_claim": False,
    }
    return Application(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load()


def test_shipped_defaults(rules: RuleSet) -> None:
    assert rules.amount == Decimal(600)
    assert rules.version
    assert rules.evaluate(application()) == []


@pytest.mark.parametrize(
    ("changes", "codes"),
    [
        ({"separation_reason": "quit"}, ["INELIGIBLE_SEPARATION"]),
        ({"separation_reason": "fired_misconduct"}, ["INELIGIBLE_SEPARATION"]),
        ({"separation_reason": "reduced_hours"}, []),
        ({"separation_reason": "fired_other"}, []),
        ({"weeks_worked": 19}, ["INSUFFICIENT_WEEKS"]),
        ({"weeks_worked": 20}, []),
        ({"base_wages": Decimal("2499.99")}, ["INSUFFICIENT_WAGES"]),
        ({"base_wages": Decimal("2500")}, []),
        ({"has_open_claim": True}, ["DUPLICATE_CLAIM"]),
        ({"separation_reason": "quit", "weeks_worked": 5}, ["INELIGIBLE_SEPARATION", "INSUFFICIENT_WEEKS"]),
    ],
)
def test_every_broken_rule_gives_its_code(rules: RuleSet, changes: dict, codes: list[str]) -> None:
    assert rules.evaluate(application(**changes)) == codes


def test_every_code_has_a_plain_explanation(rules: RuleSet) -> None:
    for rule in rules.rules:
        assert rules.explain(rule.code) != rule.code
        assert len(rules.explain(rule.code)) > 20


def test_an_override_file_changes_version_amount_and_thresholds(tmp_path: Path) -> None:
    f = tmp_path / "rules.json"
    f.write_text(
        json.dumps(
            {
                "version": "test-7",
                "amount": 450.5,
                "rules": [{"code": "INSUFFICIENT_WEEKS", "kind": "min_weeks_worked", "min": 50, "explain": "x"}],
            }
        )
    )
    rules = RuleSet.load(f)
    assert (rules.version, rules.amount) == ("test-7", Decimal("450.5"))
    assert rules.evaluate(application(weeks_worked=40)) == ["INSUFFICIENT_WEEKS"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"version": "1", "amount": 600, "rules": [{"code": "X", "kind": "nope", "explain": ""}]}, "rules[0].kind"),
        ({"version": "1", "amount": 0, "rules": []}, "amount"),
        ({"amount": 600, "rules": []}, "version"),
        (
            {
                "version": "1",
                "amount": 600,
                "rules": [{"code": "X", "kind": "min_weeks_worked", "explain": "", "max": 1}],
            },
            "rules[0]",
        ),
    ],
)
def test_a_bad_rules_file_names_the_problem(tmp_path: Path, doc: dict, message: str) -> None:
    f = tmp_path / "rules.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(RulesFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RuleSet.load(f)
