"""Admin commands: over the bus the payout report, dead letters and reconciliation; the sign-in client key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from hms.bus import BusError, ReplyError, bus_of
from hms.bus.registry import discover

from . import operations
from .api import report_csv
from .reconcile import SWEEP_AGE_S, reconcile, sweep_accounts
from .signin import public_jwks


def table(rows: list[list[Any]], header: list[str]) -> str:
    """Rows as a plain aligned text table."""
    cells = [header, *[[("" if c is None else str(c)) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def payout_table(report: dict[str, Any]) -> str:
    """The payout report as a text table, one row a day and one for the whole period (seconds)."""

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    rows = [
        [r["day"], r["count"], *(fmt(r[k]) for k in ("p50", "p90", "p99", "max"))]
        for r in [*report["byDay"], {**report, "day": "all"}]
    ]
    return table(rows, ["DAY", "COUNT", "P50_S", "P90_S", "P99_S", "MAX_S"])


class BusGroup(AppGroup):
    """Commands that ask the mesh over the bus: a service that cannot answer is a one-line error (exit 1) naming
    what failed, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BusError as exc:
            raise click.ClickException(str(exc)) from None


@click.group("metrics", cls=BusGroup)
def metrics_cli() -> None:
    """Metrics for auditors."""


@metrics_cli.command("payouts")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV instead of a table")
@click.option("--days", type=click.IntRange(1, 3660), default=None, help="only the last N days")
def payouts(as_csv: bool, days: int | None) -> None:
    """The payout-time report: count, p50, p90, p99, max (seconds), by day."""
    report = bus_of(current_app).request("metrics.payouts.report", {"days": days} if days else {}, 30)
    if as_csv:
        click.echo(report_csv(report), nl=False)
        return
    click.echo(payout_table(report))


@click.group("bus", cls=BusGroup)
def bus_cli() -> None:
    """The event bus."""


@bus_cli.group("dead-letters", cls=AppGroup, invoke_without_command=True)
@click.pass_context
def dead_letters(ctx: click.Context) -> None:
    """Inspect and replay events that exhausted their retries (default: list)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_dead_letters)


@dead_letters.command("list")
def list_dead_letters() -> None:
    """List every service's dead letters, oldest first within each service."""
    bus = bus_of(current_app)
    found, silent = operations.dead_letters(bus, discover(bus), current_app.config["HMS_REQUEST_TIMEOUT_S"])
    for s in silent:
        click.echo(f"warning: no dead letters from {s}", err=True)
    rows = [
        [d["ref"], d["subject"], d["eventId"], d["consumer"], d["attempts"], d["failedAt"], d["error"][:80]]
        for d in found
    ]
    if not rows:
        click.echo("no dead letters")
        return
    click.echo(table(rows, ["ID", "SUBJECT", "EVENT", "CONSUMER", "ATTEMPTS", "FAILED_AT", "ERROR"]))


@dead_letters.command("replay")
@click.argument("dead_letter_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="replay every dead letter")
def replay(dead_letter_id: str | None, replay_all: bool) -> None:
    """Hand dead letter ID (service:number), or --all of them, to its consumer again."""
    bus, timeout = bus_of(current_app), current_app.config["HMS_REQUEST_TIMEOUT_S"]
    if bool(dead_letter_id) == replay_all:
        raise click.UsageError("give exactly one of ID or --all")
    if replay_all:
        refs = [d["ref"] for d in operations.dead_letters(bus, discover(bus), timeout)[0]]
    else:
        try:
            operations.parse_ref(dead_letter_id or "")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="ID") from None
        refs = [dead_letter_id or ""]
    failed = 0
    for ref in refs:
        try:
            operations.replay(bus, ref, timeout)
            click.echo(f"replayed {ref}")
        except ReplyError as exc:  # report each failure, go on with the rest
            failed += 1
            click.echo(f"failed {ref}: {exc.detail}", err=True)
        except BusError as exc:
            failed += 1
            click.echo(f"failed {ref}: {exc}", err=True)
    if failed:
        raise click.ClickException(f"{failed} of {len(refs)} replays failed")


@click.group("audit", cls=BusGroup)
def audit_cli() -> None:
    """Checks for auditors."""


@audit_cli.command("reconcile")
@click.option("--strict", is_flag=True, help="also fail while payments are still in flight")
def reconcile_cmd(strict: bool) -> None:
    """Every approved claim has one payment or an explicit failure; every payment a payout record."""
    r = reconcile(bus_of(current_app))
    for claim_id, problem in r.gaps:
        click.echo(f"GAP {claim_id}: {problem}")
    for claim_id in r.in_flight:
        click.echo(f"IN FLIGHT {claim_id}: payment not settled yet")
    click.echo(
        f"claims {r.claims}, approved {r.approved}, payments {r.payments}, "
        f"gaps {len(r.gaps)}, in flight {len(r.in_flight)}"
    )
    if not r.ok(strict):
        raise SystemExit(1)


@audit_cli.command("sweep-accounts")
@click.option(
    "--older-than-minutes",
    type=click.IntRange(min=1),
    default=SWEEP_AGE_S // 60,
    show_default=True,
    help="only bank details registered longer ago (a submission still on its way is younger)",
)
def sweep_accounts_cmd(older_than_minutes: int) -> None:
    """Delete bank details that no claim will use: those registered for a submission svc never filed."""
    r = sweep_accounts(bus_of(current_app), older_than_minutes * 60)
    for claim_id, problem in r.failed:
        click.echo(f"FAILED {claim_id}: {problem}", err=True)
    click.echo(
        f"unused bank details: {len(r.deleted)} deleted, {len(r.kept)} kept (their claims were filed), "
        f"{len(r.failed)} failed"
    )
    if r.failed:
        raise SystemExit(1)


@click.group("oidc", cls=AppGroup)
def oidc_cli() -> None:
    """Browser sign-in at the agency's OpenID Provider."""


@oidc_cli.command("client-jwks")
@click.argument("key_file", required=False, type=click.Path(exists=True, dir_okay=False))
def client_jwks(key_file: str | None) -> None:
    """Print the public JWKS to register with the provider for private_key_jwt: of KEY_FILE (an RSA private key in
    PEM), else of HMS_OIDC_CLIENT_KEY_FILE."""
    path = key_file or current_app.config["HMS_OIDC_CLIENT_KEY_FILE"]
    if not path:
        raise click.UsageError("give KEY_FILE or set HMS_OIDC_CLIENT_KEY_FILE")
    try:
        click.echo(json.dumps(public_jwks(Path(path).read_bytes()), indent=2))
    except ValueError:
        raise click.BadParameter(f"{path}: not an RSA private key in PEM") from None


def init_app(app: Flask) -> None:
    """Register the admin command groups."""
    for group in (metrics_cli, bus_cli, audit_cli, oidc_cli):
        app.cli.add_command(group)
