"""A gateway in a process of its own sees what the embedded one sees: it gets only a bus, over NATS.

Process A runs every service with a gateway; process B runs the gateway alone. A dead letter made in svc's
database must show on both caseworker pages alike, and be listed and replayed from a CLI that hosts nothing
but the gateway.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

from sqlalchemy import MetaData

from hms.bus.memory import MemoryBus
from hms.contracts import Contracts
from hms.runtime import ServiceStore, messaging_tables
from tests.e2e.proc import HmsProcess
from tests.e2e.test_faults import tokens
from tests.natsd import NatsServer

GHOST = {"claimId": "ghost", "paymentId": "p1", "citizen": "x", "amount": 600, "sentAt": "2026-11-27T10:00:00Z"}


def dead_letter_section(html: str) -> str:
    """The dead-letter part of the caseworker page, without the per-request CSRF field."""
    section = html[html.index('<h2 id="dead-letters">') :]
    return re.sub(r'name="csrf" value="[^"]*"', "", section)


def test_a_gateway_alone_shows_and_replays_the_services_dead_letters(
    nats: NatsServer, hms_process: Callable[..., HmsProcess], database_url: str
) -> None:
    env = {
        "HMS_BUS_URL": nats.url,
        "HMS_DATABASE_URL": database_url,
        "HMS_OUTBOX_POLL_S": "0.1",
        "HMS_BUS_BACKOFF_S": "0.05",
        "HMS_BUS_MAX_DELIVER": "2",
    }
    embedded = hms_process({**env, "HMS_SERVICES": "gateway,svc,ach,metrics,notifier,auth"})
    alone = hms_process({**env, "HMS_SERVICES": "gateway"}, log="gateway.log")
    embedded.start()
    alone.start()
    cookie = {"Authorization": "Bearer " + tokens(embedded.instance, ["casey"], "caseworker")["casey"]}

    # payment.sent for a claim svc never heard of, written into ach's outbox: A's relay sends it, svc
    # cannot apply it and gives up after two deliveries.
    md = MetaData()
    messaging_tables(md)
    url = database_url or f"sqlite:///{embedded.instance / 'ach.db'}"
    ach = ServiceStore("ach", md, url, MemoryBus(Contracts()))
    with ach.session() as s:
        s.emit("payment.sent", GHOST)
    ach.engine.dispose()

    def page(proc: HmsProcess) -> str:
        status, html = proc.request("GET", "/caseworker", headers=cookie)
        assert status == 200, html
        return dead_letter_section(html)

    deadline = time.monotonic() + 30
    while "payment.sent" not in page(embedded) and time.monotonic() < deadline:
        time.sleep(0.2)
    seen = page(embedded)
    assert "svc:" in seen and "svc.on_payment_sent" in seen and "unknown claim ghost" in seen
    assert page(alone) == seen  # before the gateway got only a bus, this said "No dead letters."

    cli_env = {**os.environ, **env, "HMS_SERVICES": "gateway", "HMS_INSTANCE_PATH": str(alone.instance)}

    def hms(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hms.cli", *args], env=cli_env, capture_output=True, text=True, timeout=60
        )

    listed = hms("bus", "dead-letters", "list")
    assert listed.returncode == 0, listed.stderr
    ref = re.search(r"^(svc:\d+)\s+payment\.sent", listed.stdout, flags=re.MULTILINE)
    assert ref, listed.stdout
    replayed = hms("bus", "dead-letters", "replay", ref.group(1))
    # svc ran the handler again and it failed again (the claim is still unknown): the service's own error
    assert replayed.returncode == 1
    assert f"failed {ref.group(1)}: LookupError: payment.sent: unknown claim ghost" in replayed.stderr
    unknown = hms("bus", "dead-letters", "replay", "svc:999999")
    assert unknown.returncode == 1 and "no dead letter 999999" in unknown.stderr
