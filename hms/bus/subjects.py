"""NATS subject syntax: tokens separated by dots, `*` matches one token, `>` the rest."""

from __future__ import annotations

from functools import lru_cache


class SubjectError(ValueError):
    """A subject or pattern that NATS would refuse."""


def check_subject(subject: str, *, pattern: bool = False) -> str:
    """Return `subject` if it is valid (wildcards only when `pattern`), else raise."""
    if not isinstance(subject, str) or not subject:
        raise SubjectError("subject must be a non-empty string")
    return _check(subject, pattern)


@lru_cache(maxsize=4096)
def _check(subject: str, pattern: bool) -> str:
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token or any(c.isspace() for c in token):
            raise SubjectError(f"subject {subject!r} has an empty token or white space")
        if token in ("*", ">") or "*" in token or ">" in token:
            if not pattern:
                raise SubjectError(f"subject {subject!r}: wildcards are only for subscriptions")
            if token not in ("*", ">") or (token == ">" and i != len(tokens) - 1):
                raise SubjectError(f"pattern {subject!r}: '>' must be the last token, alone")
    return subject


@lru_cache(maxsize=4096)
def matches(pattern: str, subject: str) -> bool:
    """Whether `subject` is matched by `pattern` under NATS wildcard rules."""
    p_tokens = pattern.split(".")
    s_tokens = subject.split(".")
    for i, p in enumerate(p_tokens):
        if p == ">":
            return len(s_tokens) > i
        if i >= len(s_tokens) or (p != "*" and p != s_tokens[i]):
            return False
    return len(p_tokens) == len(s_tokens)
