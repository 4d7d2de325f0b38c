import json
from decimal import Decimal
from pathlib import Path

import pytest

from hms.svc.rules import Application, MinBaseWages, RuleSet, RulesFileError, SeparationReason


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


def test_an_unknown_code_is_explained_by_itself(rules: RuleSet) -> None:
    assert rules.explain("NOT_A_RULE") == "NOT_A_RULE"


def test_each_code_has_its_own_sentence(rules: RuleSet) -> None:
    assert [rules.explain(r.code) for r in rules.rules] == [
        "You left your job for a reason that does not qualify (quitting or misconduct).",
        "You worked fewer than 20 weeks in the base period.",
        "Your base-period wages were below $2,500.",
        "You already have an approved or paid claim.",
    ]


def test_only_the_one_open_claim_rule_names_the_open_claim(rules: RuleSet) -> None:
    assert [r.code for r in rules.rules if rules.names_open_claim(r.code)] == ["DUPLICATE_CLAIM"]
    assert not rules.names_open_claim("NOT_A_RULE")


@pytest.mark.parametrize(("amount", "ok"), [(1, True), (0.99, False), (0, False)])
def test_the_benefit_amount_is_at_least_one(tmp_path: Path, amount: float, ok: bool) -> None:
    f = tmp_path / "rules.json"
    f.write_text(json.dumps({"version": "1", "amount": amount, "rules": []}))
    if ok:
        assert RuleSet.load(f).amount == Decimal(str(amount))
    else:
        with pytest.raises(RulesFileError, match="amount must be at least 1"):
            RuleSet.load(f)


def test_a_bad_file_says_what_kind_of_error(tmp_path: Path) -> None:
    f = tmp_path / "rules.json"
    f.write_text("{not json")
    with pytest.raises(RulesFileError, match=r"rules.json: JSONDecodeError: "):
        RuleSet.load(f)
    f.write_text(json.dumps({"version": "1", "amount": 600, "rules": [{"code": "X", "explain": ""}]}))
    with pytest.raises(RulesFileError, match=r"rules\[0\]\.kind None is not one of \['min_base_wages', "):
        RuleSet.load(f)
    f.write_text(json.dumps({"version": "1", "amount": 600, "rules": [{"code": "X", "kind": "nope", "explain": ""}]}))
    with pytest.raises(RulesFileError, match=r"rules\[0\]\.kind 'nope' is not one of"):
        RuleSet.load(f)
    f.write_text(
        json.dumps(
            {
                "version": "1",
                "amount": 600,
                "rules": [{"code": "X", "kind": "min_base_wages", "explain": "", "min": "lots"}],
            }
        )
    )
    with pytest.raises(RulesFileError, match=r"rules\[0\]: InvalidOperation"):
        RuleSet.load(f)


def test_thresholds_are_read_exactly(tmp_path: Path) -> None:
    f = tmp_path / "rules.json"
    entries = [
        {"code": "W", "kind": "min_base_wages", "min": 2500.1, "explain": "w"},
        {"code": "S", "kind": "separation_reason", "eligible": ["laid_off"], "explain": "s"},
    ]
    f.write_text(json.dumps({"version": "1", "amount": 600, "rules": entries}))
    rules = RuleSet.load(f)
    assert rules.rules[0] == MinBaseWages("W", "w", Decimal("2500.1"))  # exact, not a binary float
    assert rules.rules[1] == SeparationReason("S", "s", frozenset({"laid_off"}))
    assert rules.evaluate(application(base_wages=Decimal("2500.1"))) == []
    assert rules.evaluate(application(base_wages=Decimal("2500.09"), separation_reason="quit")) == ["W", "S"]
