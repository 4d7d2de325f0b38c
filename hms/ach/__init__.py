"""ach: the payments service — direct-deposit accounts, and payments through the bank behind a breaker.

service.py is its face (what it serves and consumes); payments.py is where it pays; bank.py the bank.
"""

from .service import service

__all__ = ["service"]
