"""Marshmallow schemas of the HTTP API: what clients may send and what they get back."""

from __future__ import annotations

from collections.abc import Callable

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from hms.contracts.vocabulary import (
    ACCOUNT_NUMBER,
    ACCOUNT_TYPES,
    CLAIM_STATUSES,
    ROUTING_NUMBER,
    SEPARATION_REASONS,
    account_number_problem,
    routing_number_problem,
)


class Whole(validate.Regexp):
    """A pattern the whole value must match (fullmatch: Python's `$` also matches before a final newline)."""

    def __call__(self, value: str) -> str:  # type: ignore[override]  # only fields.String values reach it
        if self.regex.fullmatch(value) is None:  # type: ignore[call-overload]  # a str pattern
            raise ValidationError(self._format_error(value))
        return value


class Strict(Schema):
    """Unknown fields are refused (no client sets amount or status)."""

    class Meta:
        unknown = RAISE


def _checked(problem: Callable[[str], str | None]) -> Callable[[str], None]:
    """A field validator from one of the vocabulary's checks (ach runs the same ones)."""

    def check(value: str) -> None:
        message = problem(value)
        if message:
            raise ValidationError(message)

    return check


class ClaimantIn(Strict):
    name = fields.String(required=True, validate=validate.Length(1, 200))
    ssnLast4 = fields.String(required=True, validate=Whole(r"[0-9]{4}", error="must be exactly 4 digits"))
    email = fields.Email(required=True, validate=validate.Length(3, 254))


class DirectDepositIn(Strict):
    # The spec states the shared patterns anchored (JSON Schema patterns are ECMA-262: `$` is the very end there).
    routingNumber = fields.String(
        required=True, validate=_checked(routing_number_problem), metadata={"pattern": f"^{ROUTING_NUMBER.pattern}$"}
    )
    accountNumber = fields.String(
        required=True, validate=_checked(account_number_problem), metadata={"pattern": f"^{ACCOUNT_NUMBER.pattern}$"}
    )
    accountType = fields.String(required=True, validate=validate.OneOf(ACCOUNT_TYPES))


class ClaimIn(Strict):
    claimant = fields.Nested(ClaimantIn, required=True)
    employer = fields.String(required=True, validate=validate.Length(1, 200))
    separationReason = fields.String(required=True, validate=validate.OneOf(SEPARATION_REASONS))
    weeksWorked = fields.Integer(required=True, strict=True, validate=validate.Range(0, 520))
    baseWages = fields.Float(required=True, allow_nan=False, validate=validate.Range(0, 10_000_000))
    directDeposit = fields.Nested(DirectDepositIn, required=True)


class ReissueOut(Schema):
    paymentId = fields.String()
    account = fields.String(metadata={"description": "the new account, masked"})
    accountType = fields.String()


class SubmitHeaders(Schema):
    idempotency_key = fields.String(
        data_key="Idempotency-Key",
        load_default=None,
        validate=Whole(r"[\x21-\x7e]{1,255}", error="must be 1 to 255 visible ASCII characters"),
    )


class ClaimantOut(Schema):
    name = fields.String()
    email = fields.String()
    ssnLast4 = fields.String()


class TimelineOut(Schema):
    status = fields.String()
    at = fields.String()
    detail = fields.String(allow_none=True)


class ReasonOut(Schema):
    code = fields.String()
    message = fields.String()
    claimId = fields.String(metadata={"description": "DUPLICATE_CLAIM: the claim already open"})


class ClaimOut(Schema):
    id = fields.String()
    citizen = fields.String()
    status = fields.String(metadata={"enum": list(CLAIM_STATUSES)})
    amount = fields.Float(allow_none=True)
    reasons = fields.List(fields.String())
    reasonDetails = fields.List(fields.Nested(ReasonOut))
    duplicateOf = fields.String(allow_none=True, metadata={"description": "the open claim this one duplicates"})
    ruleVersion = fields.String()
    employer = fields.String()
    claimant = fields.Nested(ClaimantOut)
    separationReason = fields.String()
    weeksWorked = fields.Integer()
    baseWages = fields.Float()
    submittedAt = fields.String()
    decidedAt = fields.String(allow_none=True)
    paymentId = fields.String(allow_none=True)
    failureReason = fields.String(allow_none=True)
    timeline = fields.List(fields.Nested(TimelineOut))
    account = fields.String(metadata={"description": "the masked direct-deposit account"})


class ClaimListQuery(Strict):
    page = fields.Integer(load_default=1, validate=validate.Range(1, 100_000))
    pageSize = fields.Integer(load_default=50, validate=validate.Range(1, 200))
    status = fields.String(load_default=None, validate=validate.OneOf(CLAIM_STATUSES))


class ClaimPage(Schema):
    items = fields.List(fields.Nested(ClaimOut))
    page = fields.Integer()
    pageSize = fields.Integer()
    total = fields.Integer()


class ReportQuery(Strict):
    days = fields.Integer(load_default=None, validate=validate.Range(1, 3660))


class DaySummary(Schema):
    day = fields.String()
    count = fields.Integer()
    p50 = fields.Float(allow_none=True)
    p90 = fields.Float(allow_none=True)
    p99 = fields.Float(allow_none=True)
    max = fields.Float(allow_none=True)


class Bucket(Schema):
    le = fields.Float(allow_none=True, metadata={"description": "upper bound in seconds; null = no bound"})
    count = fields.Integer()


class Stages(Schema):
    submitted = fields.Integer(metadata={"description": "claims submitted"})
    sent = fields.Integer(metadata={"description": "payments sent (in an ACH file, or to the sandbox bank)"})
    settled = fields.Integer(metadata={"description": "payments whose ACH file's effective date came, not returned"})
    returned = fields.Integer(metadata={"description": "payments the citizen's bank sent back, not sent again since"})


class PayoutReport(DaySummary):
    stages = fields.Nested(Stages)
    unit = fields.String()
    histogram = fields.List(fields.Nested(Bucket))
    sum = fields.Float(metadata={"description": "sum of all payout times, seconds"})
    byDay = fields.List(fields.Nested(DaySummary))


class ServiceOut(Schema):
    name = fields.String()
    id = fields.String()
    version = fields.String()
    host = fields.String()
    pid = fields.Integer()
    publishes = fields.List(fields.String())
    subscribes = fields.List(fields.String())
    serves = fields.List(fields.String())
    health = fields.Dict()
    breakers = fields.Dict(keys=fields.String(), values=fields.String())
    started = fields.String()


class MeshOut(Schema):
    services = fields.List(fields.Nested(ServiceOut))


class Problem(Schema):
    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    field = fields.String()
    errors = fields.List(fields.Dict())


class HealthOut(Schema):
    status = fields.String()
    checks = fields.Dict()
