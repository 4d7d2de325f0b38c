"""Alembic environment of every service: the runtime hands over the connection, the metadata and the schema."""

from alembic import context

from hms.runtime.migrations import run_migrations

run_migrations(context)
