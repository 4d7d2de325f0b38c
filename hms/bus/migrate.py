"""Run one service's Alembic migrations on the connection its store hands over."""

from __future__ import annotations

from typing import Any


def render_item(type_: str, obj: Any, autogen_context: Any) -> Any:
    """Render our UTC column type as the plain DateTime it stores, so migrations need no hms import."""
    from .store import UtcDateTime

    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations(context: Any) -> None:
    """Configure Alembic for the service in `context.config.attributes` and run its migrations."""
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
