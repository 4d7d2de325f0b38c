"""The one delivery policy both engines follow: what becomes of a delivery once its handler has run.

Decided from the exception's type: a message outside the policy (Refused) or one that breaks its contract
(ContractError) cannot get better by retrying and goes straight to dead letters; one signed by a key this process
does not know (Unverifiable) goes back for redelivery however often it came, since another member may verify it;
any other failure is retried with the subscription's backoff until its deliveries are used up, then dead-lettered.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from hms.contracts import ContractError

from .base import Event, Refused, SubscribeOptions, Unverifiable

log = logging.getLogger("hms.bus")
HOPELESS: tuple[type[Exception], ...] = (Refused, ContractError)


class Verdict(enum.Enum):
    """What the engine does with a delivery."""

    ACK = "ack"  # handled: settle it
    RETRY = "retry"  # deliver again after `delay`
    DEAD = "dead"  # give up: store it as a dead letter (or drop it where there is no dead-letter store)


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    error: str = ""
    delay: float = 0.0


ACKED = Outcome(Verdict.ACK)


def describe(error: BaseException) -> str:
    """An error as dead letters and logs show it."""
    return str(error) if isinstance(error, ContractError) else f"{type(error).__name__}: {error}"


def decide(event: Event, error: BaseException | None, options: SubscribeOptions) -> Outcome:
    """The outcome of delivery number `event.attempt` of `event`, whose handler raised `error` (or not)."""
    if error is None:
        return ACKED
    text = describe(error)
    if isinstance(error, Unverifiable):  # never this process's to give up: back for a member that can verify it
        log.error(
            "cannot verify %s %s here (delivery %d); handing it back: %s", event.subject, event.id, event.attempt, text
        )
        return Outcome(Verdict.RETRY, text, options.delay(event.attempt))
    if isinstance(error, HOPELESS):
        return Outcome(Verdict.DEAD, text)
    if event.attempt >= options.max_deliver:
        log.error("giving up on %s %s after %d attempts: %s", event.subject, event.id, event.attempt, text)
        return Outcome(Verdict.DEAD, text)
    log.warning("handler for %s %s failed (attempt %d): %s", event.subject, event.id, event.attempt, text)
    return Outcome(Verdict.RETRY, text, options.delay(event.attempt))
