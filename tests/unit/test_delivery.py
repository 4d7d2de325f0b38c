"""The one delivery policy both engines follow, decided from what the handler raised."""

from __future__ import annotations

import pytest
from sqlalchemy import MetaData

from hms.bus import Event, Refused, SubscribeOptions, Unverifiable
from hms.bus.delivery import Verdict, decide
from hms.contracts import ContractError
from hms.runtime import Consumer, Service

OPTIONS = SubscribeOptions(max_deliver=3, backoff=(0.1, 0.5))


def attempt(n: int) -> Event:
    """Delivery number `n` of one event."""
    return Event(
        "claim.approved", "id-1", "/hms/svc", "gov.hms.claim.approved.v1", "2026-11-28T00:00:00Z", {}, attempt=n
    )


def test_a_handled_delivery_is_acknowledged() -> None:
    assert decide(attempt(1), None, OPTIONS).verdict is Verdict.ACK


def test_a_failure_is_retried_with_the_subscriptions_backoff_then_dead_lettered() -> None:
    first, second, last = (decide(attempt(n), RuntimeError("database is locked"), OPTIONS) for n in (1, 2, 3))
    assert (first.verdict, first.delay) == (Verdict.RETRY, 0.1)
    assert (second.verdict, second.delay) == (Verdict.RETRY, 0.5)
    assert (last.verdict, last.error) == (Verdict.DEAD, "RuntimeError: database is locked")


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (Refused("ach may not publish claim.approved"), "Refused: ach may not publish claim.approved"),
        (ContractError("claim.approved", "amount", "is required"), "claim.approved: amount: is required"),
    ],
)
def test_what_retrying_cannot_mend_goes_to_dead_letters_at_once(error: Exception, text: str) -> None:
    outcome = decide(attempt(1), error, OPTIONS)
    assert (outcome.verdict, outcome.error) == (Verdict.DEAD, text)


def test_a_subclass_of_a_hopeless_error_is_hopeless_too_and_a_message_that_merely_says_refused_is_not() -> None:
    class PolicyChanged(Refused):
        pass

    assert decide(attempt(1), PolicyChanged("x"), OPTIONS).verdict is Verdict.DEAD
    assert decide(attempt(1), ValueError("Refused: looks like one"), OPTIONS).verdict is Verdict.RETRY


def test_a_service_declares_each_consumer_name_once() -> None:
    class Demo:
        def __init__(self, config: object, units: object) -> None: ...

        def record(self, s: object, event: Event) -> None: ...

        def again(self, s: object, event: Event) -> None: ...

    service = Service("demo", MetaData(), Demo, consumers=[Consumer("claim.approved", Demo.record, name="record")])
    assert {"outbox", "inbox", "dead_letters"} <= set(service.metadata.tables)
    with pytest.raises(ValueError, match="consumer name 'record' declared twice"):
        Service(
            "demo",
            MetaData(),
            Demo,
            consumers=[
                Consumer("claim.approved", Demo.record, name="record"),
                Consumer("claim.denied", Demo.again, name="record"),
            ],
        )


def test_a_message_this_process_cannot_verify_goes_back_however_often_it_came() -> None:
    """Another member may know the key: never dead-lettered here, even past the subscription's deliveries."""
    error = Unverifiable("service token signed by a key this process does not know (kid 'k2')")
    for n in (1, 2, 3, 50):
        outcome = decide(attempt(n), error, OPTIONS)
        assert (outcome.verdict, outcome.delay) == (Verdict.RETRY, OPTIONS.delay(n)), n
