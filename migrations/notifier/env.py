"""Alembic environment of the notifier service."""

from alembic import context

from hms.bus.migrate import run_migrations

run_migrations(context)
