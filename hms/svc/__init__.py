"""svc: the claim service — claims, eligibility rules (rules.py, rules.json) and decisions (service.py)."""

from .service import service

__all__ = ["service"]
