"""PostgreSQL for tests: HMS_TEST_DATABASE_URL names a server; each test gets a database of its own.

Unset, the PostgreSQL variants are skipped with a reason, except in CI (CI=true), where they fail:
.ci/run sets the variable and checks that the server answers before any test runs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ENV = "HMS_TEST_DATABASE_URL"


def server_url() -> str:
    """The server's URL, or a skip (a failure in CI) when it is not configured."""
    url = os.environ.get(ENV, "")
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{ENV} is not set: CI must run the PostgreSQL tests (see .ci/run)")
        pytest.skip(f"PostgreSQL variant: set {ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/test to run it")
    return url


def fresh_postgres_database() -> Iterator[str]:
    """Create an empty database for one test and drop it afterwards."""
    base = make_url(server_url())
    name = f"hms_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
