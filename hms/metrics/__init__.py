"""metrics: payout times for auditors (service.py)."""

from .service import service

__all__ = ["service"]
