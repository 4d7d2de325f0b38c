"""The claim service's own tables."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, MetaData, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hms.contracts.vocabulary import ClaimStatus
from hms.runtime.database import EnumText, UtcDateTime

ID_LENGTH = 36  # a claim id: a uuid (submit v2's contract admits longer ones, which svc refuses)


class Base(DeclarativeBase):
    metadata = MetaData()


class Claim(Base):
    __tablename__ = "claims"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    citizen: Mapped[str] = mapped_column(String(128), index=True)
    claimant_name: Mapped[str] = mapped_column(String(200))
    claimant_ssn_last4: Mapped[str] = mapped_column(String(4))
    claimant_email: Mapped[str] = mapped_column(String(254))
    employer: Mapped[str] = mapped_column(String(200))
    separation_reason: Mapped[str] = mapped_column(String(32))
    weeks_worked: Mapped[int] = mapped_column(Integer)
    base_wages: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    status: Mapped[ClaimStatus] = mapped_column(EnumText(ClaimStatus, 20))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    reasons: Mapped[list[str]] = mapped_column(JSON, default=list)
    rule_version: Mapped[str] = mapped_column(String(64))
    submitted_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    payment_id: Mapped[str | None] = mapped_column(String(36))
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    duplicate_of: Mapped[str | None] = mapped_column(String(36))  # the open claim a DUPLICATE_CLAIM denial names

    __table_args__ = (Index("ix_claims_citizen_status", "citizen", "status"),)


class TimelineEntry(Base):
    __tablename__ = "timeline"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    claim_id: Mapped[str] = mapped_column(ForeignKey("claims.id"), index=True)
    status: Mapped[ClaimStatus] = mapped_column(EnumText(ClaimStatus, 20))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    detail: Mapped[str | None] = mapped_column(String(200))


class IdempotencyRecord(Base):
    """The first result of a submit, returned again for a retry with the same key."""

    __tablename__ = "idempotency_keys"

    citizen: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(128))
    claim_id: Mapped[str] = mapped_column(String(36))
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Withdrawal(Base):
    """A submission the gateway stopped waiting for and withdrew before svc filed it: its id is never filed later
    (a late request for it is refused), so the bank details registered under it can be deleted."""

    __tablename__ = "withdrawals"

    claim_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    citizen: Mapped[str] = mapped_column(String(128))
    withdrawn_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
