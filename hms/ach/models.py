"""The payments service's own tables: bank details never leave them."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Index, Integer, MetaData, Numeric, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hms.runtime.database import EnumText, UtcDateTime, table_of


class PaymentState(enum.StrEnum):
    """Where a payment is: pending → sending → sent, or failed; on the ACH rail a sent payment may come back."""

    PENDING = "pending"  # due at next_attempt_at
    SENDING = "sending"  # claimed by a worker (claimed_by), at the bank now or cut short by a crash
    SENT = "sent"
    FAILED = "failed"
    RETURNED = "returned"  # the receiving bank sent it back (return_code); pending again with new bank details


class Base(DeclarativeBase):
    metadata = MetaData()


class Account(Base):
    """A direct-deposit account as given with one claim, registered before the claim is decided.

    Rows are never changed: a payment goes where the citizen said when filing its claim. `claim_id` is empty
    only for accounts registered by a gateway from before claims carried their account (contract v1).
    """

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    citizen: Mapped[str] = mapped_column(String(128), index=True)
    claim_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    routing_number: Mapped[str] = mapped_column(String(9))
    account_number: Mapped[str] = mapped_column(String(17))
    account_type: Mapped[str] = mapped_column(String(10))
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime())

    @property
    def masked(self) -> str:
        """The account number as it may be shown: its last four digits."""
        return "****" + self.account_number[-4:]


class Forgotten(Base):
    """A claim id whose bank details were deleted because its claim will never be paid (denied, or not filed):
    a registration for it arriving later is refused, so no details are stored again under it."""

    __tablename__ = "forgotten"

    claim_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    citizen: Mapped[str] = mapped_column(String(128))
    forgotten_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class Payment(Base):
    """One benefit payment: pending → sending → sent, or failed. At most one per claim."""

    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    claim_id: Mapped[str] = mapped_column(String(36), unique=True)
    citizen: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[str | None] = mapped_column(String(36))  # empty only for payments from before accounts
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    idempotency_key: Mapped[str] = mapped_column(String(80), unique=True)
    state: Mapped[PaymentState] = mapped_column(EnumText(PaymentState, 10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(40))
    last_error: Mapped[str | None] = mapped_column(String(300))
    bank_reference: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    traceparent: Mapped[str | None] = mapped_column(String(128))
    # The NACHA rail: the file the entry left in, and its trace number (unique: a return names it).
    file_id: Mapped[int | None] = mapped_column(Integer, index=True)
    trace_number: Mapped[str | None] = mapped_column(String(15), unique=True)
    return_code: Mapped[str | None] = mapped_column(String(3))  # R02, R03, …: why the last entry came back
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())  # its file's effective date had come

    __table_args__ = (Index("ix_payments_due", "state", "next_attempt_at"),)

    def event(self, **more: Any) -> dict[str, Any]:
        """The data of an event about this payment (payment.sent, .returned, .settled): whose, how much, and `more`."""
        return payment_event(self, **more)


ACCOUNTS, PAYMENTS, FORGOTTEN = table_of(Account), table_of(Payment), table_of(Forgotten)  # for Core statements


def payment_event(p: Any, **more: Any) -> dict[str, Any]:
    """The data of an event about a payment (a Payment, or a row of its columns): whose, how much, and `more`."""
    return {
        "claimId": p.claim_id,
        "paymentId": p.id,
        "citizen": p.citizen,
        "amount": float(p.amount),
        **more,
    }


class AchFile(Base):
    """A NACHA file of the nacha provider: recorded (building) before it is written, sent once it is in the drop.

    Its name, file id modifier and creation time are chosen here, before the file exists: a file written again
    after a crash is the same file under the same name, byte for byte.
    """

    __tablename__ = "ach_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)  # the file sequence
    name: Mapped[str] = mapped_column(String(80), unique=True)
    file_id_modifier: Mapped[str] = mapped_column(String(1))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    cutoff_at: Mapped[datetime] = mapped_column(UtcDateTime(), unique=True)  # at most one file per cut-off
    effective_date: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD: when the credits settle
    entries: Mapped[int] = mapped_column(Integer)
    total_cents: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(10))  # building → sent
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    offset_trace: Mapped[str | None] = mapped_column(String(15))  # the balancing debit, with HMS_ACH_OFFSET_ACCOUNT


class Setting(Base):
    """A value the service keeps for good, such as the originator id its bank statements carry."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class InboundFile(Base):
    """A file the bank dropped in the inbound folder (returns, notifications of change): read once, by content."""

    __tablename__ = "ach_inbound_files"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
    notices: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(300))  # a file that could not be read at all


class Notice(Base):
    """One return (R-code) or notification of change (C-code) from the bank, for the entry with `trace_number`."""

    __tablename__ = "ach_notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_sha256: Mapped[str] = mapped_column(String(64), index=True)
    code: Mapped[str] = mapped_column(String(3))
    trace_number: Mapped[str] = mapped_column(String(15), index=True)
    payment_id: Mapped[str | None] = mapped_column(String(36), index=True)  # empty: no payment has that trace
    detail: Mapped[str | None] = mapped_column(String(300))  # a NOC's corrected data; what was done about it
    received_at: Mapped[datetime] = mapped_column(UtcDateTime())
