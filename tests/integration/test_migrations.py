"""Every service's migrations build exactly the schema its models describe, in its own database or schema."""

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from hms import create_app
from hms.runtime import mesh_of


@pytest.mark.parametrize("service", ["svc", "ach", "metrics", "notifier"])
def test_migrations_match_models(tmp_path: Path, database_url: str, service: str) -> None:
    app = create_app({"HMS_INSTANCE_PATH": str(tmp_path), "HMS_DATABASE_URL": database_url, "HMS_SERVICES": [service]})
    mesh = mesh_of(app)
    store = mesh.stores[service]
    store.upgrade()
    store.upgrade()  # a second run changes nothing
    with store.engine.connect() as conn:
        schema = service if conn.dialect.name == "postgresql" else None
        if schema:
            conn.exec_driver_sql(f"SET search_path TO {schema}")  # compare against the service's own schema
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), store.metadata)
        tables = set(inspect(conn).get_table_names(schema=schema))
    assert diff == []
    assert {"outbox", "inbox", "dead_letters", "alembic_version"} <= tables
    mesh.close()


def test_each_service_has_its_own_database_or_schema(tmp_path: Path, database_url: str) -> None:
    app = create_app({"HMS_INSTANCE_PATH": str(tmp_path), "HMS_DATABASE_URL": database_url})
    mesh = mesh_of(app)
    mesh.upgrade()
    owned = {
        "svc": {"claims", "timeline", "idempotency_keys"},
        "ach": {"accounts", "payments"},
        "metrics": {"payouts"},
        "notifier": {"notifications"},
    }
    for name, store in mesh.stores.items():
        with store.engine.connect() as conn:
            schema = name if conn.dialect.name == "postgresql" else None
            tables = set(inspect(conn).get_table_names(schema=schema))
        # A service's own tables are there, and no other service's.
        assert owned[name] <= tables
        assert all(tables.isdisjoint(t) for other, t in owned.items() if other != name)
        if not database_url:
            assert str(store.engine.url).endswith(f"{name}.db")
    urls = {str(store.engine.url) for store in mesh.stores.values()}
    assert len(urls) == (1 if database_url else 4)
    mesh.close()


def test_processes_starting_together_migrate_one_at_a_time(tmp_path: Path, database_url: str) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "HMS_INSTANCE_PATH": str(tmp_path), "HMS_DATABASE_URL": database_url, "HMS_SERVICES": "ach"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "hms.cli", "db", "upgrade"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all(out.strip().endswith("upgraded: ach") for out in outputs)


def test_the_messaging_tables_are_what_their_migration_makes(tmp_path: Path, database_url: str) -> None:
    """The outbox, inbox and dead-letter tables as the runtime defines them, against the shared migration."""
    from sqlalchemy import MetaData

    from hms.runtime import messaging_tables

    app = create_app(
        {"HMS_INSTANCE_PATH": str(tmp_path), "HMS_DATABASE_URL": database_url, "HMS_SERVICES": ["notifier"]}
    )
    mesh = mesh_of(app)
    store = mesh.stores["notifier"]
    store.upgrade()
    fresh = MetaData()
    messaging_tables(fresh)  # defined here, in the test: not the copy made when hms was imported
    with store.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET search_path TO notifier")
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, parent: kind != "table" or name in fresh.tables,
            },
        )
        diff = compare_metadata(context, fresh)
    assert set(fresh.tables) == {"outbox", "inbox", "dead_letters"}
    assert diff == []
    mesh.close()
