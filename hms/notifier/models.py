"""The notifier's own tables."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hms.runtime.database import UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData()


class Notification(Base):
    """One message sent to a citizen, keyed by the event that caused it."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    citizen: Mapped[str] = mapped_column(String(128), index=True)
    claim_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(String(500))  # what the citizen was told, in plain words
    sent_at: Mapped[datetime] = mapped_column(UtcDateTime())
