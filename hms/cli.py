"""The `hms` command: a Flask CLI group over `create_app`."""

from __future__ import annotations

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, with_appcontext

from hms.bus.mesh import mesh_of


def _create_app() -> Flask:
    from hms import create_app

    return create_app()


@click.group(cls=FlaskGroup, create_app=_create_app, add_version_option=False)
def main() -> None:
    """HMS payout mesh (the same commands as `flask --app hms`)."""


@click.group("db", cls=AppGroup)
def db() -> None:
    """The services' databases."""


@db.command("upgrade")
def upgrade() -> None:
    """Run every hosted service's migrations."""
    mesh = mesh_of(current_app)
    mesh.upgrade()
    click.echo(f"upgraded: {', '.join(mesh.stores)}")


@db.command("revision")
@click.argument("service")
@click.option("-m", "--message", required=True, help="what the migration changes")
def revision(service: str, message: str) -> None:
    """Autogenerate a migration for SERVICE from its models (for developers)."""
    stores = mesh_of(current_app).stores
    if service not in stores:
        raise click.BadParameter(f"choose one of {', '.join(stores)}", param_hint="SERVICE")
    stores[service].upgrade()
    stores[service].revision(message)


@click.command("up")
@with_appcontext
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256))
def up(host: str, port: int, threads: int) -> None:
    """Create/upgrade the databases, then serve everything in one process."""
    from waitress import serve

    mesh = mesh_of(current_app)
    mesh.upgrade()
    mesh.start()  # resumes every unfinished delivery and payment left by a crash
    click.echo(f"hms mesh up on http://{host}:{port} (bus {current_app.config['HMS_BUS_URL']})")
    try:
        serve(current_app._get_current_object(), host=host, port=port, threads=threads, ident="hms")  # type: ignore[attr-defined]
    finally:
        mesh.close()


def init_app(app: Flask) -> None:
    """Register `up` and `db` on the app's CLI."""
    app.cli.add_command(db)
    app.cli.add_command(up)


if __name__ == "__main__":
    main()
