"""The metrics service's own tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Index, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hms.runtime.database import UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData()


class Payout(Base):
    """Payout time of one claim, from the events' own times (either event may come first)."""

    __tablename__ = "payouts"

    claim_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    citizen: Mapped[str] = mapped_column(String(128))
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    payment_id: Mapped[str | None] = mapped_column(String(36))
    seconds: Mapped[float | None] = mapped_column(Float)
    # The ACH rail's later stages: settled on the file's effective date; returned by the citizen's bank.
    settled_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    returned_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    return_code: Mapped[str | None] = mapped_column(String(3))
    day: Mapped[str | None] = mapped_column(String(10))

    # The report reads percentiles straight off these indexes (see PayoutMetrics.report).
    __table_args__ = (Index("ix_payouts_seconds", "seconds"), Index("ix_payouts_day_seconds", "day", "seconds"))
