"""The `hms` command: a Flask CLI group over `create_app`."""

from __future__ import annotations

import gc
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, FlaskGroup, ScriptInfo, with_appcontext

from hms.bus import bus_of
from hms.bus.registry import discover
from hms.config import ConfigError
from hms.contracts import HERE as CONTRACTS
from hms.gateway.cli import table
from hms.runtime import mesh_of

RELEASED = CONTRACTS / "lock" / "released.json"
URL_FILE = "hms.url"  # where `hms up` says, while it runs, on which address it serves


def _create_app() -> Flask:
    from hms import create_app

    return create_app()


class HmsGroup(FlaskGroup):
    """Flask's CLI group with hms's commands only (no `run`, `shell`, `routes`, `--app` or `--env-file`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            create_app=_create_app, add_default_commands=False, add_version_option=False, load_dotenv=False, **kwargs
        )
        self.params = [p for p in self.params if p.name not in ("app", "env_file", "debug")]

    def list_commands(self, ctx: click.Context) -> list[str]:
        # Flask would print a configuration mistake as a traceback above the help; main() makes it one line.
        ctx.ensure_object(ScriptInfo).load_app()
        return super().list_commands(ctx)


@click.group(cls=HmsGroup, set_debug_flag=False)
def cli() -> None:
    """HMS payout mesh: serve it, run its workers, and look after its data."""


def main(args: list[str] | None = None) -> None:
    """The `hms` command. A start-up mistake is one line naming the setting, and exit code 2."""
    try:
        cli.main(args=args, prog_name="hms")
    except ConfigError as exc:
        click.echo(f"hms: {exc}", err=True)
        sys.exit(2)


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
    from waitress.server import create_server

    mesh = mesh_of(current_app)
    if not mesh.hosts("gateway"):
        raise click.UsageError("HMS_SERVICES has no gateway: use `hms worker SERVICE…` for services without HTTP")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:  # bind first: a port in use is said before anything starts
        server = create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="hms",
            # Idle connections hold no thread, only a slot: many slots, and idle ones closed soon, so that a
            # client holding sockets open cannot stop the server from accepting anyone else (docs/deploy.md).
            connection_limit=current_app.config["HMS_HTTP_CONNECTION_LIMIT"],
            channel_timeout=current_app.config["HMS_HTTP_CHANNEL_TIMEOUT_S"],
            cleanup_interval=min(30.0, current_app.config["HMS_HTTP_CHANNEL_TIMEOUT_S"]),
        )
    except OSError as exc:
        mesh.close()
        raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    address = Path(current_app.config["HMS_INSTANCE_PATH"]) / URL_FILE
    try:
        mesh.upgrade()
        if "HMS_DEMO" not in os.environ:
            current_app.config["HMS_DEMO"] = True  # the demo sign-in is on by default for `hms up`
        mesh.start()  # resumes every unfinished delivery and payment left by a crash
        _settle()
        click.echo(f"hms mesh up on http://{host}:{port} (bus {current_app.config['HMS_BUS_URL']})")
        address.write_text(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}\n")
        # SIGTERM (a service manager's stop) ends the loop like Ctrl-C: waitress finishes the requests in
        # hand, then the mesh closes (relays, consumers, workers) and the address file goes.
        signal.signal(signal.SIGTERM, _stop)
        server.run()
    finally:
        server.close()
        mesh.close()
        address.unlink(missing_ok=True)


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def _settle() -> None:
    """Leave what startup made (modules, the app, the mesh: about 140,000 objects) out of every later garbage
    collection: they live as long as the process, and a full collection that walks them holds the GIL for about
    70 ms on this machine, in the middle of someone's claim; 0.3 ms without them (bench/ANALYSIS.md)."""
    gc.collect()  # what startup left as garbage goes first, not into the frozen generation
    gc.freeze()


@click.command("worker")
@click.argument("services", nargs=-1, required=True)
@with_appcontext
def worker(services: tuple[str, ...]) -> None:
    """Run SERVICES (svc, ach, metrics, notifier, auth) without HTTP, until SIGTERM or SIGINT."""
    import threading

    from hms import create_app
    from hms.config import ALL_SERVICES

    unknown = [s for s in services if s not in ALL_SERVICES or s == "gateway"]
    if unknown:
        raise click.BadParameter(f"{unknown[0]!r}; choose from svc, ach, metrics, notifier, auth", param_hint="SERVICE")
    if current_app.config["HMS_BUS_URL"].startswith("memory://"):
        raise click.UsageError("a worker needs a shared bus: set HMS_BUS_URL=nats://host:4222")
    mesh_of(current_app).close()  # the CLI's own app was only needed to get here
    app = create_app({"HMS_SERVICES": list(services)})
    mesh = mesh_of(app)
    mesh.upgrade()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port, host = app.config["HMS_METRICS_PORT"], app.config["HMS_METRICS_HOST"]
    if port:  # bound before anything starts: a port in use is said at once
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr=host, registry=mesh.telemetry.registry)
        except OSError as exc:
            mesh.close()
            raise ConfigError(f"HMS_METRICS_PORT: cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        click.echo(f"metrics on http://{host}:{port}/metrics")
    mesh.start()
    _settle()
    click.echo(f"hms worker running {', '.join(services)} on {app.config['HMS_BUS_URL']}")
    stop.wait()
    mesh.close()


@click.group("mesh", cls=AppGroup)
def mesh_cli() -> None:
    """The service mesh."""


@mesh_cli.command("status")
@click.option("--timeout", default=1.0, type=click.FloatRange(0.05, 30), help="seconds to wait for answers")
@click.option("--url", default=None, help="memory:// only: the running `hms up` (default: the one of this instance)")
def status(timeout: float, url: str | None) -> None:
    """Show every running service instance as a table.

    On nats:// every process answers on the bus. On memory:// the bus is the running server's own, so this asks
    that server (GET /mesh/services, with an admin token minted here from the instance's signing key).
    """
    if current_app.config["HMS_BUS_URL"].startswith("memory://"):
        services = _running_server_registry(url, timeout)
    else:
        services = discover(bus_of(current_app), timeout)
    if not services:
        raise click.ClickException("no service answered on the bus")
    rows = [
        [
            sv["name"],
            sv["version"],
            sv["id"][:8],
            f"{sv['host']}:{sv['pid']}",
            sv["health"].get("status"),
            sv["health"].get("unverifiable", "-"),  # messages it could not verify: another mesh, or lagging keys
            ",".join(f"{k}={v}" for k, v in sv["breakers"].items()) or "-",
            ",".join(sv["publishes"]) or "-",
            ",".join(sv["subscribes"]) or "-",
            ",".join(sv["serves"]) or "-",
        ]
        for sv in services
    ]
    click.echo(
        table(
            rows,
            [
                "SERVICE",
                "VERSION",
                "INSTANCE",
                "PROCESS",
                "HEALTH",
                "UNVERIFIED",
                "BREAKERS",
                "PUBLISHES",
                "SUBSCRIBES",
                "SERVES",
            ],
        )
    )


def _running_server_registry(url: str | None, timeout: float) -> list[dict[str, Any]]:
    """GET /mesh/services of the running `hms up` of this instance, as an admin."""
    import json
    import urllib.error
    import urllib.request

    from hms.auth.keys import IdentityProvider

    cfg = current_app.config
    where = Path(cfg["HMS_INSTANCE_PATH"]) / URL_FILE
    if url is None:
        if not where.exists():
            raise click.ClickException(f"no `hms up` runs on {cfg['HMS_INSTANCE_PATH']} (give --url to ask another)")
        url = where.read_text().strip()
    idp = IdentityProvider(
        cfg["HMS_JWT_PRIVATE_KEY_FILE"], cfg["HMS_DEV_JWKS_FILE"], cfg["HMS_JWT_ISSUER"], cfg["HMS_JWT_AUDIENCE"]
    )
    token = idp.issue("hms-cli", "admin", ttl=60)
    request = urllib.request.Request(f"{url}/mesh/services", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=max(timeout, 5.0)) as r:
            return list(json.loads(r.read())["services"])
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{url}/mesh/services answered {exc.code}: {exc.read()[:200]!r}") from None
    except OSError as exc:
        raise click.ClickException(f"no mesh answers at {url} ({exc}); is `hms up` running?") from None


@mesh_cli.command("nats-config")
@click.option(
    "--user",
    "users",
    multiple=True,
    metavar="NAME=SERVICE,…",
    help="a NATS user for a process hosting these services (repeatable); default: one per service and 'up'",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="write the config here (default: INSTANCE/nats-auth.conf)",
)
@click.option(
    "--account",
    default=None,
    metavar="NAME",
    help="write the users as a NATS account of their own (include it in the server's accounts block): one per mesh",
)
def nats_config_cmd(users: tuple[str, ...], out: str | None, account: str | None) -> None:
    """Write nats-server users and subject permissions from the HMS-SYS-AUTH policy."""
    from pathlib import Path

    from hms.bus.guard import Policy
    from hms.bus.natsauth import nats_config

    policy = Policy.load()
    chosen: dict[str, list[str]] = {}
    for spec in users:
        name, _, services = spec.partition("=")
        if not name or not services:
            raise click.BadParameter(f"{spec!r}: expected NAME=SERVICE[,SERVICE…]", param_hint="--user")
        chosen[name] = [s.strip() for s in services.split(",") if s.strip()]
    if not chosen:
        chosen = {name: [name] for name in policy.services}
        chosen["up"] = list(policy.services)
    if account is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", account):
        raise click.BadParameter(
            f"{account!r}: letters, digits, '_' and '-', starting with a letter", param_hint="--account"
        )
    if account:  # user names are server-wide: each mesh's carry its account's name
        chosen = {f"{account}-{name}": granted for name, granted in chosen.items()}
    try:
        text, passwords = nats_config(policy, chosen, account=account)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--user") from None
    path = Path(out or Path(current_app.config["HMS_INSTANCE_PATH"]) / "nats-auth.conf")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(text))
    path.chmod(0o600)
    where = (
        f"inside the accounts block of nats-server.conf (accounts {{ include {path.name} }})"
        if account
        else "from nats-server.conf"
    )
    click.echo(f"wrote {path}; include it {where}. Each process's HMS_BUS_URL:")
    for name, granted in chosen.items():
        click.echo(f"  {','.join(granted)}: nats://{name}:{passwords[name]}@HOST:4222")


@click.group("contracts")
def contracts_cli() -> None:
    """The event contracts (JSON Schema per subject and version)."""


@contracts_cli.command("docs")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None, help="write here, not to stdout")
def contracts_docs(out: str | None) -> None:
    """Write the AsyncAPI 3 document of the mesh (also served at /asyncapi.json)."""
    import json

    from hms.contracts.asyncapi import asyncapi

    text = json.dumps(asyncapi(), indent=2) + "\n"
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@contracts_cli.command("check")
@click.option(
    "--against",
    type=click.Path(exists=True, dir_okay=False),
    default=str(RELEASED),
    show_default=True,
    help="the contracts consumers were built against",
)
def contracts_check(against: str) -> None:
    """Fail when a changed contract would break consumers of the released version."""
    import json

    from hms.contracts.asyncapi import snapshot
    from hms.contracts.compat import check

    problems = check(json.loads(Path(against).read_text()), snapshot())
    for line in problems:
        click.echo(f"BREAKING {line}")
    if problems:
        raise click.ClickException(f"{len(problems)} breaking change(s): publish them as a new version instead")
    click.echo("contracts compatible with the released versions")


@contracts_cli.command("lock")
def contracts_lock() -> None:
    """Record the current contracts as released (run when a release ships)."""
    import json

    from hms.contracts.asyncapi import snapshot

    RELEASED.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
    click.echo(f"wrote {RELEASED}")


def init_app(app: Flask) -> None:
    """Register `up`, `worker`, `db`, `contracts` and `demo` on the app's CLI."""
    from .demo import demo

    for command in (db, up, worker, mesh_cli, contracts_cli, demo):
        app.cli.add_command(command)


if __name__ == "__main__":
    main()
