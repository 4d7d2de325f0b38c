"""`hms demo`: drive claims through a running mesh over HTTP, then show the payout report."""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from hms.gateway.cli import payout_table

NAMES = ["Diego Ramos", "Rosa Lind", "Amara Okafor", "Li Wei", "Sam Patel", "Noor Haddad", "Ivan Petrov"]


def _call(
    url: str, method: str, path: str, token: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def claim_body(rng: random.Random, eligible: bool) -> dict[str, Any]:
    """A plausible claim; an ineligible one quit after a few weeks."""
    return {
        "claimant": {"name": rng.choice(NAMES), "ssnLast4": f"{rng.randrange(10000):04d}", "email": "demo@example.org"},
        "employer": rng.choice(["Acme Corp", "Globex", "Initech", "Umbrella"]),
        "separationReason": rng.choice(["laid_off", "reduced_hours", "fired_other"]) if eligible else "quit",
        "weeksWorked": rng.randrange(20, 52) if eligible else rng.randrange(1, 19),
        "baseWages": round(rng.uniform(8000, 60000), 2),
        "directDeposit": {
            "routingNumber": "011000015",
            "accountNumber": f"{rng.randrange(10**11, 10**12)}",
            "accountType": "checking",
        },
    }


@click.command("demo")
@click.option("--claims", "count", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--url", default="http://127.0.0.1:5000", show_default=True, help="the running mesh (hms up)")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--ineligible",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="share of claims that break the rules",
)
@click.option("--seed", default=None, type=int, help="for a repeatable run")
@with_appcontext
def demo(count: int, url: str, concurrency: int, ineligible: float, seed: int | None) -> None:
    """Drive N claims through the running mesh with a progress bar, then print the payout report."""
    idp = current_app.extensions["hms.auth"]
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:6]
    jobs = [(f"demo-{run}-{i}", rng.random() >= ineligible) for i in range(count)]
    outcomes: dict[str, int] = {}

    def submit(job: tuple[str, bool]) -> str:
        citizen, eligible = job
        body = claim_body(random.Random(citizen), eligible)
        status, reply = _call(
            url, "POST", "/claims", idp.issue(citizen, "citizen"), body, {"Idempotency-Key": f"{citizen}-1"}
        )
        return reply["status"] if status == 201 else f"http {status}"

    try:
        _call(url, "GET", "/livez", "")
    except OSError as exc:
        raise click.ClickException(f"no mesh answers at {url} ({exc}); start it with `hms up`") from None
    with ThreadPoolExecutor(concurrency) as pool, click.progressbar(length=count, label="Submitting claims") as bar:
        for outcome in pool.map(submit, jobs):
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            bar.update(1)
    click.echo(", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())))
    staff = idp.issue("demo-caseworker", "caseworker")
    with click.progressbar(length=outcomes.get("approved", 0), label="Waiting for payments") as bar:
        deadline, paid_before = time.monotonic() + 120, 0
        while time.monotonic() < deadline:
            waiting = _call(url, "GET", "/claims?status=approved&pageSize=1", staff)[1]["total"]
            paid = outcomes.get("approved", 0) - waiting
            bar.update(max(0, paid - paid_before))
            paid_before = max(paid, paid_before)
            if waiting == 0:
                break
            time.sleep(0.25)
    report = _call(url, "GET", "/audit/payouts", idp.issue("demo-auditor", "auditor"))[1]
    click.echo(payout_table(report))
