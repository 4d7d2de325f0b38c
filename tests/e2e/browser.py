"""A real headless Chromium for the web UI's tests (Debian's, through Playwright; nothing downloads a browser)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

ENV = "HMS_TEST_BROWSER"


def chromium_path() -> str:
    """Debian's chromium; skipped without it, except in CI (CI=true), where its absence fails."""
    path = os.environ.get(ENV) or shutil.which("chromium") or ""
    if not path:
        if os.environ.get("CI"):
            pytest.fail(f"{ENV} is not set and no chromium on PATH: CI must run the browser tests (see .ci/run)")
        pytest.skip(f"browser tests: install Debian's chromium or set {ENV}")
    return path


class Watched:
    """A browser context whose pages report console errors, script errors and failed requests."""

    def __init__(self, context: Any) -> None:
        self.context, self.problems, self.allowed = context, [], []
        context.on("page", self.watch)

    def watch(self, page: Any) -> None:
        page.on(
            "console",
            lambda m: m.type == "error" and self.problems.append(f"console error: {m.text} ({m.location.get('url')})"),
        )
        page.on("pageerror", lambda e: self.problems.append(f"script error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} ({r.failure})"))
        page.on(
            "response",
            lambda r: r.status >= 400 and self.problems.append(f"{r.status} for {r.request.resource_type} {r.url}"),
        )

    def new_page(self) -> Any:
        return self.context.new_page()

    def unexpected(self) -> list[str]:
        return [p for p in self.problems if not any(a in p for a in self.allowed)]


@contextmanager
def chromium() -> Iterator[Watched]:
    """Chromium; every page a test opens must load without a console error or a failed request."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=executable,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        watched = Watched(b.new_context(accept_downloads=True))
        yield watched
        watched.context.close()
        b.close()
    assert not watched.unexpected(), watched.unexpected()


def fill_claim(page: Any, **changes: str) -> None:
    values = {
        "Full name": "Diego Ramos",
        "E-mail address": "diego@example.org",
        "Last 4 digits of your Social Security number": "1234",
        "Employer": "Acme Corp",
        "Weeks worked in the last year": "40",
        "Wages in the last year (dollars)": "31200",
        "Bank routing number": "011000015",
        "Account number": "000123456789",
        **changes,
    }
    for label, value in values.items():
        page.get_by_label(label, exact=True).fill(value)
