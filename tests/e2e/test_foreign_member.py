"""A member that cannot verify the mesh's service tokens must not make it lose or refuse anything.

A process of another mesh (its own signing key, its own databases) joins the same NATS, the same durable consumers
and queue groups, while citizens file claims. Before the fix it dead-lettered and terminated every event it could
not verify, on the shared durable, and answered requests with 403.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.e2e.proc import HmsProcess
from tests.e2e.test_split import FAST, Load, answering, assert_each_paid_once, start_split_mesh
from tests.natsd import NatsServer


def test_a_process_with_another_signing_key_joining_mid_load_loses_and_refuses_nothing(
    nats: NatsServer, hms_process: Callable[..., HmsProcess]
) -> None:
    env = {**FAST, "HMS_BUS_URL": nats.url}
    web, workers, registry, _ = start_split_mesh(hms_process, env)
    # Half the claims, then the rest once the other process has joined: it joins while the first half are paid,
    # and however long it takes to start, it is a member for the second half.
    load = Load(web, [f"foreign-{i:04d}" for i in range(200)], hold=0.5)
    load.until(0.15)
    other = hms_process(env, ["worker", "ach"], name="other-mesh", log="other-mesh.log")
    other.start()
    answering(registry, [other, *workers], 30)
    load.release()
    load.until(0.8)
    ach = [s for s in answering(registry, [other, *workers], 30) if s["name"] == "ach"]
    shown = {s["pid"]: s["health"].get("unverifiable") for s in ach}
    other.stop()
    load.join(180)
    assert load.failures == []  # every claim accepted: no 403 from the other mesh's member, no 5xx
    assert_each_paid_once(web, load.accepted)

    # It did take part, and could verify nothing: hms mesh status shows it with the messages it handed back.
    assert shown[other.proc.pid] > 0, shown  # type: ignore[union-attr]
    assert all(shown[w.proc.pid] == 0 for w in workers), shown  # type: ignore[union-attr]
    assert "cannot verify" in other.log.read_text()
    # The mesh's own members dead-lettered nothing.
    listed = web.cli("bus", "dead-letters", "list")
    assert (listed.returncode, listed.stdout.strip()) == (0, "no dead letters"), listed.stdout + listed.stderr


def test_a_member_that_learns_a_new_key_30_s_late_loses_and_refuses_nothing(
    tmp_path: Path, nats: NatsServer, postgres_url: str, hms_process: Callable[..., HmsProcess]
) -> None:
    """Three machines on one PostgreSQL and one NATS, each with its own copy of the keys: the web node and one ach
    worker rotate to a new signing key; the other ach worker's JWKS gets the new key 30 s later. Meanwhile it
    cannot verify what the rotated nodes sign: it hands events back and passes requests on, never refusing one."""
    import shutil

    from hms.auth.keys import IdentityProvider

    env = {
        **FAST,
        "HMS_BUS_URL": nats.url,
        "HMS_DATABASE_URL": postgres_url,
        "HMS_ACH_SANDBOX_STATEMENT": str(tmp_path / "bank.jsonl"),
    }
    web = hms_process({**env, "HMS_SERVICES": "gateway,svc,metrics,notifier,auth"}, name="web")
    web.start()  # makes the first key (jwt-private.pem, jwks.json)
    machines = {name: tmp_path / name for name in ("ach-b", "ach-c")}
    for home in machines.values():
        home.mkdir()
        for f in ("jwt-private.pem", "jwks.json"):
            shutil.copy(web.instance / f, home / f)
    b, c = (hms_process(env, ["worker", "ach"], name=n, log=f"{n}.log") for n in machines)
    b.start()
    c.start()
    time.sleep(2)
    load = Load(web, [f"rotation-{i:04d}" for i in range(300)])
    load.until(0.1)

    # The rotation: a new key for b (its JWKS keeps the old one too), copied to the web node; both restart.
    (b.instance / "jwt-private.pem").unlink()
    IdentityProvider(str(b.instance / "jwt-private.pem"), str(b.instance / "jwks.json"), "hms-dev", "hms").ensure_keys()
    for f in ("jwt-private.pem", "jwks.json"):
        shutil.copy(b.instance / f, web.instance / f)
    b.stop()
    b.start()
    web.stop()
    web.start()
    rotated = time.monotonic()
    load.until(0.3)
    while time.monotonic() < rotated + 30:  # c still knows only the old key
        time.sleep(0.5)
    lagging = c.log.read_text()
    shutil.copy(b.instance / "jwks.json", c.instance / "jwks.json")
    load.join(180)

    assert load.failures == []  # none refused
    assert_each_paid_once(web, load.accepted, tmp_path / "bank.jsonl")
    assert "cannot verify" in lagging  # c did get what it could not verify, and handed it on
    listed = web.cli("bus", "dead-letters", "list")
    assert (listed.returncode, listed.stdout.strip()) == (0, "no dead letters"), listed.stdout + listed.stderr
