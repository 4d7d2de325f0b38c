"""Start-up mistakes, as an operator makes them: one line naming the setting, exit code 2, nothing started."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.e2e.proc import free_port
from tests.natsd import nats_server_binary
from tests.pg import server_url


def hms(tmp_path: Path, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `hms ARGS` in a fresh instance folder with these HMS_* settings."""
    full = {**os.environ, "HMS_INSTANCE_PATH": str(tmp_path / "instance"), **env}
    return subprocess.run(
        [sys.executable, "-m", "hms.cli", *args], env=full, capture_output=True, text=True, timeout=timeout
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit code 2, one line on stderr that names `words`, no traceback, nothing said to be up."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hms: "), result.stderr
    assert "Traceback" not in result.stderr and "up on" not in result.stdout
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("HMS_BUS_URL", "bogus://", "expected memory:// or nats://"),
        ("HMS_CLAIMS_PER_MINUTE", "lots", "expected a number"),
        ("HMS_SWEEP_ACCOUNTS_EVERY_S", "-60", "must not be negative"),
        ("HMS_SYS_AUTH", "maybe", "expected true or false"),
        ("HMS_SERVICES", "gateway,payroll", "unknown service 'payroll'"),
        ("HMS_BUS_BACKOFF_S", "1,soon", "comma-separated seconds"),
        ("HMS_ACH_SANDBOX_FAIL_RATE", "2", "between 0 and 1"),
        ("HMS_DATABASE_URL", "postgres:/x:y", "HMS_DATABASE_URL"),
        ("HMS_ACH_DATABASE_URL", "mysql://nobody@127.0.0.1/x", "HMS_ACH_DATABASE_URL"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(tmp_path: Path, setting: str, value: str, named: str) -> None:
    port = free_port()
    assert_one_line(hms(tmp_path, "up", "--port", str(port), **{setting: value}), setting, named)
    with socket.socket() as s:  # nothing was left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_help_with_a_bad_setting_is_one_line(tmp_path: Path) -> None:
    assert_one_line(hms(tmp_path, "--help", HMS_BUS_URL="carrier-pigeon://"), "HMS_BUS_URL", "carrier-pigeon")


def test_help_lists_only_hms_commands(tmp_path: Path) -> None:
    result = hms(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    commands = result.stdout.split("Commands:")[1].split()
    for ours in ("up", "worker", "db", "audit", "bus", "mesh", "metrics", "demo", "contracts", "auth"):
        assert ours in commands
    for flasks in ("run", "shell", "routes"):
        assert flasks not in commands
    assert "--app" not in result.stdout and "--env-file" not in result.stdout


def test_a_database_that_does_not_exist(tmp_path: Path) -> None:
    url = make_url(server_url()).set(database=f"hms_missing_{uuid.uuid4().hex[:8]}")
    result = hms(tmp_path, "up", "--port", str(free_port()), HMS_DATABASE_URL=url.render_as_string(False))
    assert_one_line(result, "HMS_DATABASE_URL", url.database or "", "does not exist")


def test_a_database_server_that_does_not_answer(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/hms"
    result = hms(tmp_path, "db", "upgrade", HMS_SVC_DATABASE_URL=url, HMS_SERVICES="svc")
    assert_one_line(result, "HMS_SVC_DATABASE_URL", "cannot use")


def test_a_nats_server_without_jetstream_is_one_line_and_no_disconnection_warning(tmp_path: Path) -> None:
    """A server started without -js: the engine connects, finds no JetStream, says so in one line and closes its
    client — a bus that never started warns of no disconnection on the way out."""
    port = free_port()
    server = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        result = hms(tmp_path, "up", "--port", str(free_port()), HMS_BUS_URL=f"nats://127.0.0.1:{port}")
    finally:
        server.kill()
        server.wait()
    assert_one_line(result, "HMS_BUS_URL", "has no JetStream", "-js")
    assert "disconnected" not in result.stdout + result.stderr


def test_nats_not_running_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    started = time.monotonic()
    result = hms(
        tmp_path,
        "up",
        "--port",
        str(free_port()),
        HMS_BUS_URL=f"nats://127.0.0.1:{free_port()}",
        HMS_NATS_CONNECT_TIMEOUT_S="2",
    )
    assert_one_line(result, "HMS_BUS_URL", "no NATS server answered", "within 2 s")
    assert time.monotonic() - started < 20


def test_a_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line(hms(tmp_path, "up", "--port", str(port)), f"--port {port}", "in use")
    assert not (tmp_path / "instance" / "svc.db").exists()  # refused before any database was touched


@pytest.fixture
def gunicorn() -> str:
    path = shutil.which("gunicorn", path=os.path.dirname(sys.executable))
    assert path, "gunicorn is in the test extra"
    return path


def test_gunicorn_refuses_several_workers_on_the_in_process_bus(tmp_path: Path, gunicorn: str) -> None:
    assert hms(tmp_path, "db", "upgrade").returncode == 0
    env = {**os.environ, "HMS_INSTANCE_PATH": str(tmp_path / "instance")}
    args = [gunicorn, "-w", "2", "-b", f"127.0.0.1:{free_port()}", "hms.wsgi:app"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "memory:// runs the whole mesh in one process" in result.stderr and "-w 1" in result.stderr
    assert "App failed to load" in result.stderr


def test_gunicorn_refuses_a_database_that_is_not_migrated(tmp_path: Path, gunicorn: str) -> None:
    env = {**os.environ, "HMS_INSTANCE_PATH": str(tmp_path / "instance")}
    args = [gunicorn, "-w", "1", "-b", f"127.0.0.1:{free_port()}", "hms.wsgi:app"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "is not migrated: run `hms db upgrade`" in result.stderr
