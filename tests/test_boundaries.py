"""The architecture is enforced: import-linter contracts from setup.cfg."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports") or f"{sys.executable} -m importlinter"
    result = subprocess.run(
        [*exe.split(), "--config", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_services_are_really_checked(tmp_path: Path) -> None:
    """A planted cross-service import breaks the build (the contract is not vacuous)."""
    pkg = tmp_path / "hms"
    shutil.copytree(ROOT / "hms", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "ach" / "leak.py").write_text("from hms.svc.models import Claim\n")
    exe = shutil.which("lint-imports") or f"{sys.executable} -m importlinter"
    result = subprocess.run(
        [*exe.split(), "--config", str(ROOT / "setup.cfg")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode != 0
    assert "hms.ach.leak -> hms.svc.models" in result.stdout
