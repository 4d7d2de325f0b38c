"""Alembic, per service: each service's database carries the shared messaging revisions, then its own.

The scripts ship inside the package (`hms/migrations`, the top-level `migrations/` folder of the source tree):
`migrations/messaging` holds the outbox, inbox and dead-letter tables every service has, written once;
`migrations/<service>` the service's own tables, its first revision revising the messaging one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData

from .database import EnumText, UtcDateTime

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SHARED = "messaging"


def upgrade(engine: Engine, service: str, metadata: MetaData, revision: str = "heads") -> None:
    """Run the service's migrations up to `revision`."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(_config(conn, service, metadata), revision)


def is_current(engine: Engine, service: str, metadata: MetaData) -> bool:
    """Whether the database has every migration of the service (what `hms db upgrade` does)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    with engine.connect() as conn:
        schema = None if conn.dialect.name == "sqlite" else service
        applied = MigrationContext.configure(conn, opts={"version_table_schema": schema}).get_current_heads()
        heads = ScriptDirectory.from_config(_config(conn, service, metadata)).get_heads()
    return set(applied) == set(heads)


def revision(engine: Engine, service: str, metadata: MetaData, message: str) -> None:
    """Write a new migration of the service from the difference between its models and its database."""
    from alembic import command

    with engine.begin() as conn:
        command.revision(
            _config(conn, service, metadata),
            message=message,
            autogenerate=True,
            version_path=str(MIGRATIONS / service / "versions"),
        )


def _config(conn: Any, service: str, metadata: MetaData) -> Any:
    from alembic.config import Config

    if not (MIGRATIONS / service / "versions").is_dir():
        raise FileNotFoundError(f"{MIGRATIONS / service}: no migrations for {service}")
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("version_locations", f"{MIGRATIONS / SHARED / 'versions'} {MIGRATIONS / service / 'versions'}")
    cfg.set_main_option("path_separator", "space")
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    cfg.attributes.update(connection=conn, metadata=metadata, service=service)
    return cfg


def render_item(type_: str, obj: Any, autogen_context: Any) -> Any:
    """Render our column types as the plain types they store, so migrations need no hms import."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, EnumText):
        return f"sa.String(length={obj.length})"
    return False


def run_migrations(context: Any) -> None:
    """Configure Alembic for the service in `context.config.attributes` and run its migrations (migrations/env.py)."""
    attrs = context.config.attributes
    connection = attrs["connection"]
    is_sqlite = connection.dialect.name == "sqlite"
    schema = None if is_sqlite else attrs["service"]
    if not is_sqlite:
        # Processes starting together (two `hms worker ach`) migrate one at a time; SQLite's BEGIN IMMEDIATE
        # already serialises them.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext(%(k)s))", {"k": f"hms-migrate:{schema}"})
    if (
        schema
        and not connection.exec_driver_sql("SELECT 1 FROM pg_namespace WHERE nspname = %(s)s", {"s": schema}).first()
    ):
        # Only when missing: a service role that owns its schema has no right to create schemas.
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    if schema:
        # Alembic writes some DDL (ALTER TABLE … ADD COLUMN) with bare table names: they must land in the schema.
        connection.exec_driver_sql(f'SET LOCAL search_path TO "{schema}"')
    context.configure(
        connection=connection,
        target_metadata=attrs["metadata"],
        version_table="alembic_version",
        version_table_schema=schema,
        render_as_batch=is_sqlite,
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
