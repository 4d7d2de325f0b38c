import pytest

from hms.bus import SubjectError, check_subject, matches


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("claim.approved", "claim.approved", True),
        ("claim.*", "claim.approved", True),
        ("claim.*", "claim.approved.v2", False),
        ("claim.>", "claim.approved.v2", True),
        ("claim.>", "claim", False),
        (">", "payment.sent", True),
        ("*.sent", "payment.sent", True),
        ("*.sent", "payment.failed", False),
        ("claim.approved", "claim.denied", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.d", False),
    ],
)
def test_nats_wildcards(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


@pytest.mark.parametrize("bad", ["", "a..b", "a.*", "a.>", "a b", ".a", "a."])
def test_publish_subjects_refuse_wildcards_and_empty_tokens(bad: str) -> None:
    with pytest.raises(SubjectError):
        check_subject(bad)


@pytest.mark.parametrize("bad", ["a.>.b", "a.b*", "a.>x", ""])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(SubjectError):
        check_subject(bad, pattern=True)


def test_good_patterns_pass() -> None:
    assert check_subject("claim.*.v1", pattern=True) == "claim.*.v1"
    assert check_subject("$SRV.INFO", pattern=True) == "$SRV.INFO"
