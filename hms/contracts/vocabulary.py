"""The mesh's shared vocabulary: names and checks that the gateway and the services agree on."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any

ROLES = ("citizen", "caseworker", "auditor", "admin")
USER_TOKEN_TYPE = "at+jwt"  # RFC 9068 access tokens; service tokens carry a type of their own
SERVICE_TOKEN_TYPE = "hms-svc+jwt"  # HMS-SYS-AUTH tokens, only ever accepted on the bus
MESH_AUDIENCE = "hms-mesh"
SEPARATION_REASONS = ("laid_off", "reduced_hours", "fired_other", "quit", "fired_misconduct")


class ClaimStatus(enum.StrEnum):
    """Where a claim is, as the API shows it and its timeline records it."""

    SUBMITTED = "submitted"  # a timeline entry only: every claim is decided as it is submitted
    APPROVED = "approved"
    DENIED = "denied"
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    RETURNED = "returned"  # paid, then sent back by the citizen's bank (an ACH return); paid again on new details


CLAIM_STATUSES = tuple(s.value for s in ClaimStatus)
ACCOUNT_TYPES = ("checking", "savings")


# Bank details, checked by the gateway before a claim is filed and by ach when it stores them: the same code.
# fullmatch, never `$`: Python's `$` also matches before a final newline.
ROUTING_NUMBER = re.compile(r"[0-9]{9}")
ACCOUNT_NUMBER = re.compile(r"[0-9]{4,17}")
BAD_CHECKSUM = "fails the ABA routing-number checksum"


def routing_number_problem(value: str) -> str | None:
    """What is wrong with a routing number (None when it is a valid ABA number)."""
    if ROUTING_NUMBER.fullmatch(value) is None:
        return "must be exactly 9 digits"
    if not aba_checksum_ok(value):
        return BAD_CHECKSUM
    return None


def account_number_problem(value: str) -> str | None:
    """What is wrong with an account number (None when it is 4 to 17 digits)."""
    return None if ACCOUNT_NUMBER.fullmatch(value) else "must be 4 to 17 digits"


def bank_details_problem(details: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first of `routingNumber` and `accountNumber` that is wrong, with what is wrong with it; None when both
    are right."""
    for name, problem in (("routingNumber", routing_number_problem), ("accountNumber", account_number_problem)):
        message = problem(details[name])
        if message:
            return name, message
    return None


def aba_checksum_ok(routing: str) -> bool:
    """Whether a 9-digit ABA routing number passes its checksum (weights 3, 7, 1)."""
    if len(routing) != 9 or not routing.isdigit():
        return False
    d = [int(c) for c in routing]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8])) % 10 == 0
