"""`hms mesh nats-config` turns the HMS-SYS-AUTH policy into nats-server users the broker itself enforces."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from flask import Flask

from tests.natsd import NatsServer


@pytest.fixture
def cli_app(tmp_path: Path) -> Flask:
    from hms import create_app

    return create_app({"HMS_INSTANCE_PATH": str(tmp_path / "instance")})


def test_the_broker_refuses_a_publish_outside_the_policy(cli_app: Flask, tmp_path: Path) -> None:
    conf = tmp_path / "nats-auth.conf"
    result = cli_app.test_cli_runner().invoke(
        args=["mesh", "nats-config", "--out", str(conf), "--user", "ach=ach", "--user", "svc=svc"]
    )
    assert result.exit_code == 0, result.output
    urls = dict(re.findall(r"^  (\w+): (nats://\S+)$", result.output, re.M))
    assert set(urls) == {"ach", "svc"}
    server = NatsServer(tmp_path / "js", config=conf)
    server.start()
    try:
        asyncio.run(scenario({k: v.replace("HOST:4222", f"127.0.0.1:{server.port}") for k, v in urls.items()}))
    finally:
        server.stop()


async def scenario(urls: dict[str, str]) -> None:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    ach = await nats.connect(urls["ach"], error_cb=on_error, max_reconnect_attempts=0)
    svc = await nats.connect(urls["svc"], error_cb=on_error, max_reconnect_attempts=0)
    try:
        js = ach.jetstream()
        await js.add_stream(name="HMS_EVENTS", subjects=["claim.>", "payment.>"])
        assert (await js.publish("payment.sent", b"{}")).seq == 1  # ach may publish payment.sent
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await js.publish("claim.approved", b"{}", timeout=1)  # ...but never claim.approved
        await asyncio.sleep(0.2)
        assert any('permissions violation for publish to "claim.approved"' in e.lower() for e in errors), errors
        assert (await svc.jetstream().publish("claim.approved", b"{}")).seq == 2  # svc may
        info = await js.stream_info("HMS_EVENTS")
        assert info.state.messages == 2  # the refused message never reached the stream
    finally:
        await ach.close()
        await svc.close()


def test_the_nats_config_lists_each_service_and_a_user_for_hms_up(cli_app: Flask, tmp_path: Path) -> None:
    conf = tmp_path / "all.conf"
    result = cli_app.test_cli_runner().invoke(args=["mesh", "nats-config", "--out", str(conf)])
    assert result.exit_code == 0
    text = conf.read_text()
    for user in ("gateway", "svc", "ach", "metrics", "notifier", "auth", "up"):
        assert f'"user": "{user}"' in text
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert re.search(r'"password": "\$2[aby]\$11\$', text)  # stored as bcrypt hashes, never in clear
    for password in re.findall(r"nats://\w+:([^@]+)@", result.output):
        assert password not in text
    bad = cli_app.test_cli_runner().invoke(args=["mesh", "nats-config", "--user", "x=payroll"])
    assert bad.exit_code == 2 and "payroll" in bad.output


def test_a_request_a_member_cannot_verify_is_answered_by_one_that_can(nats_server: Any) -> None:
    """Two members of one queue group; one cannot verify any token (another mesh's, or keys that lag). Every
    request is answered by the other; with no member able to verify it, the requester times out (nothing answers
    a request it cannot verify)."""
    from hms.bus import BusTimeout, Unverifiable, connect

    buses = [connect(nats_server.url, None, stream="FORWARD", event_subjects=["t.>"]) for _ in range(3)]
    try:
        answered_by: list[str] = []

        def cannot(e: Any) -> Any:
            raise Unverifiable("service token signed by a key this process does not know")

        buses[0].subscribe("rpc.who", cannot, queue="svc")
        buses[1].subscribe("rpc.who", lambda e: answered_by.append("able") or {"by": "able"}, queue="svc")
        time.sleep(0.2)
        assert [buses[2].request("rpc.who", {}, 2)["by"] for _ in range(30)] == ["able"] * 30
        assert len(answered_by) == 30
        buses[1].close()
        time.sleep(0.2)
        with pytest.raises(BusTimeout):
            buses[2].request("rpc.who", {}, 1)
    finally:
        buses[2]._call(buses[2].js.delete_stream("FORWARD"))  # type: ignore[attr-defined]
        for b in buses:
            b.close()


def test_durable_consumers_have_no_server_side_delivery_limit_and_old_ones_are_updated(nats_server: Any) -> None:
    """An earlier version created durables with max_deliver 8: the server then stopped redelivering, so a member
    that could not verify a message could make the group lose it. Subscribing updates such a consumer."""
    from nats.js import api

    from hms.bus import connect

    bus = connect(nats_server.url, None, stream="LIMITS", event_subjects=["t.>"])
    try:
        config = api.ConsumerConfig(
            name="svc_old",
            durable_name="svc_old",
            ack_policy=api.AckPolicy.EXPLICIT,
            max_deliver=8,
            filter_subject="t.x",
        )
        bus._call(bus.js.add_consumer("LIMITS", config=config))  # type: ignore[attr-defined]
        bus.subscribe("t.x", lambda e: None, queue="svc.old")
        info = bus._call(bus.js.consumer_info("LIMITS", "svc_old"))  # type: ignore[attr-defined]
        assert info.config.max_deliver == -1
        bus.subscribe("t.y", lambda e: None, queue="svc.new")
        fresh = [c for c in bus._call(bus.js.consumers_info("LIMITS")) if c.config.filter_subject == "t.y"]  # type: ignore[attr-defined]
        assert [c.config.max_deliver for c in fresh] == [-1]
    finally:
        bus._call(bus.js.delete_stream("LIMITS"))  # type: ignore[attr-defined]
        bus.close()


def test_two_meshes_in_accounts_of_their_own_share_a_server_and_never_see_each_other(
    cli_app: Flask, tmp_path: Path
) -> None:
    """`hms mesh nats-config --account NAME` per mesh: both create the same stream and consumers, and neither sees
    the other's events (docs/deploy.md, meshes sharing a NATS system)."""
    urls: dict[str, str] = {}
    for mesh in ("blue", "green"):
        result = cli_app.test_cli_runner().invoke(
            args=[
                "mesh",
                "nats-config",
                "--account",
                mesh,
                "--out",
                str(tmp_path / f"{mesh}.conf"),
                "--user",
                "up=gateway,svc,ach",
            ]
        )
        assert result.exit_code == 0, result.output
        urls[mesh] = re.findall(r"nats://\S+", result.output)[0]
    server_conf = tmp_path / "server.conf"
    server_conf.write_text("accounts {\n  include blue.conf\n  include green.conf\n}\n")
    server = NatsServer(tmp_path / "js", config=server_conf)
    server.start()
    try:
        asyncio.run(two_meshes({m: u.replace("HOST:4222", f"127.0.0.1:{server.port}") for m, u in urls.items()}))
    finally:
        server.stop()
    bad = cli_app.test_cli_runner().invoke(args=["mesh", "nats-config", "--account", "no spaces"])
    assert bad.exit_code == 2 and "--account" in bad.output


async def two_meshes(urls: dict[str, str]) -> None:
    conns = {m: await nats.connect(u, max_reconnect_attempts=0) for m, u in urls.items()}
    try:
        for mesh, nc in conns.items():
            js = nc.jetstream()
            await js.add_stream(name="HMS_EVENTS", subjects=["claim.>", "payment.>"])  # the same name in each mesh
            await js.publish("claim.approved", mesh.encode())
        for mesh, nc in conns.items():
            sub = await nc.jetstream().pull_subscribe("claim.approved", durable="ach_on_claim_approved")
            msgs = await sub.fetch(10, timeout=2)
            assert [m.data for m in msgs] == [mesh.encode()]  # its own event only
        green_responder = await conns["green"].subscribe("svc.claims.get")
        blue_responder = await conns["blue"].subscribe("svc.claims.get")
        await conns["blue"].flush()
        await conns["green"].flush()
        await conns["blue"].publish("svc.claims.get", b"{}")
        assert (await blue_responder.next_msg(timeout=2)).data == b"{}"  # its own mesh's responder gets it
        with pytest.raises(nats.errors.TimeoutError):
            await green_responder.next_msg(timeout=0.5)  # the other mesh's never does
    finally:
        for nc in conns.values():
            await nc.close()
