"""`hms mesh nats-config` turns the HMS-SYS-AUTH policy into nats-server users the broker itself enforces."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

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
