import pytest

from hms.bus import ContractError, Contracts

GOOD = {"claimId": "c1", "citizen": "diego", "amount": 600, "approvedAt": "2026-11-27T10:00:00Z", "ruleVersion": "1"}


@pytest.fixture(scope="module")
def contracts() -> Contracts:
    return Contracts()


def test_every_design_subject_has_a_contract(contracts: Contracts) -> None:
    assert set(contracts.subjects()) >= {
        "claim.submitted",
        "claim.approved",
        "claim.denied",
        "payment.sent",
        "payment.failed",
        "svc.claims.submit",
        "svc.claims.get",
        "svc.claims.list",
        "ach.accounts.register",
        "metrics.payouts.report",
    }


def test_a_valid_event_passes(contracts: Contracts) -> None:
    contracts.validate("claim.approved", GOOD)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({k: v for k, v in GOOD.items() if k != "amount"}, "amount", "required"),
        ({**GOOD, "amount": 0}, "amount", "bigger than or equal to 1"),
        ({**GOOD, "amount": "600"}, "amount", "number"),
        ({**GOOD, "name": "Diego Ramos"}, "name", "not an allowed field"),
        ({**GOOD, "claimId": 5}, "claimId", "string"),
    ],
)
def test_a_violation_names_subject_and_field(contracts: Contracts, data: dict, field: str, words: str) -> None:
    with pytest.raises(ContractError) as err:
        contracts.validate("claim.approved", data)
    assert err.value.subject == "claim.approved"
    assert err.value.field == field
    assert words in err.value.message
    assert "claim.approved" in str(err.value) and field in str(err.value)


def test_unknown_subjects_and_versions_are_refused(contracts: Contracts) -> None:
    with pytest.raises(ContractError, match="no contract"):
        contracts.validate("claim.reopened", {})
    with pytest.raises(ContractError, match="version 2"):
        contracts.validate("claim.approved", GOOD, version=2)


def test_bus_plumbing_subjects_need_no_contract(contracts: Contracts) -> None:
    contracts.validate("$SRV.PING", {})


@pytest.mark.parametrize(
    ("routing", "account", "problems"),
    [
        ("011000015", "000123456789", (None, None)),
        ("011000015\n", "000123456789\n", ("must be exactly 9 digits", "must be 4 to 17 digits")),
        ("011000016", "123", ("fails the ABA routing-number checksum", "must be 4 to 17 digits")),
        ("01100001", "1" * 18, ("must be exactly 9 digits", "must be 4 to 17 digits")),
        ("０11000015", "１234", ("must be exactly 9 digits", "must be 4 to 17 digits")),  # digits, not ASCII
        ("021000021", "1234", (None, None)),
        ("021000021", "1" * 17, (None, None)),
    ],
)
def test_bank_details_are_checked_whole_by_the_one_shared_check(
    routing: str, account: str, problems: tuple[str | None, str | None]
) -> None:
    """The gateway's schema and ach's registration both call these (no `$` that lets a final newline through)."""
    from hms.contracts.vocabulary import account_number_problem, routing_number_problem

    assert (routing_number_problem(routing), account_number_problem(account)) == problems


def test_the_gateway_and_ach_use_the_shared_bank_detail_checks() -> None:
    """One vocabulary: neither side keeps a pattern of its own for routing or account numbers."""
    import importlib
    import inspect

    from hms.contracts.vocabulary import BAD_CHECKSUM, bank_details_problem

    uses = {
        "hms.ach.service": ("bank_details_problem",),  # both checks below, in one place for ach and its rail
        "hms.ach.nacha": ("bank_details_problem",),
        "hms.gateway.schemas": ("routing_number_problem", "account_number_problem"),
    }
    for name, checks in uses.items():
        source = inspect.getsource(importlib.import_module(name))
        assert all(check in source for check in checks), name
        assert "[0-9]{9}" not in source and "[0-9]{4,17}" not in source
    good = {"routingNumber": "011000015", "accountNumber": "000123456789"}
    assert bank_details_problem(good) is None
    assert bank_details_problem({**good, "routingNumber": "011000016"}) == ("routingNumber", BAD_CHECKSUM)
    assert bank_details_problem({**good, "accountNumber": "12\n"}) == ("accountNumber", "must be 4 to 17 digits")
