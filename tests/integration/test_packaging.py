"""The package ships what it needs: a wheel installed away from the source tree can run `hms db upgrade`."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_wheel_installed_without_the_source_tree_migrates_every_service(tmp_path: Path) -> None:
    dist, site, instance = tmp_path / "dist", tmp_path / "site", tmp_path / "instance"

    def pip(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "pip", *args, "-q"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    pip("wheel", "--no-deps", "-w", str(dist), str(ROOT))
    (wheel,) = dist.glob("hms-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "hms/migrations/env.py" in names and "hms/migrations/script.py.mako" in names
    assert any(n.startswith("hms/migrations/messaging/versions/") for n in names)
    pip("install", "--no-deps", "--target", str(site), str(wheel))
    # Run from an empty folder with the installed copy first on the path: the source tree is out of reach.
    env = {**os.environ, "PYTHONPATH": str(site), "HMS_INSTANCE_PATH": str(instance), "HMS_BUS_URL": "memory://"}
    for name in ("HMS_DATABASE_URL", "HMS_SERVICES"):
        env.pop(name, None)
    code = "import hms, sys; print(hms.__file__); from hms.cli import main; main(['db', 'upgrade'])"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.splitlines()[0].startswith(str(site))
    assert "upgraded: svc, ach, metrics, notifier" in run.stdout
    for service, own in (("svc", "claims"), ("ach", "payments"), ("metrics", "payouts"), ("notifier", "notifications")):
        with sqlite3.connect(instance / f"{service}.db") as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"outbox", "inbox", "dead_letters", own} <= tables, (service, tables)
