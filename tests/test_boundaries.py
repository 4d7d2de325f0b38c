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


def lint_with_a_planted_import(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """import-linter over a copy of hms/ with `line` written into `module` (a path under hms/)."""
    pkg = tmp_path / "hms"
    shutil.copytree(ROOT / "hms", pkg, ignore=shutil.ignore_patterns("__pycache__", "migrations"))
    (pkg / module).write_text(line + "\n")
    exe = shutil.which("lint-imports") or f"{sys.executable} -m importlinter"
    return subprocess.run(
        [*exe.split(), "--config", str(ROOT / "setup.cfg")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )


def test_services_are_really_checked(tmp_path: Path) -> None:
    """A planted cross-service import breaks the build (the contract is not vacuous)."""
    result = lint_with_a_planted_import(tmp_path, "ach/leak.py", "from hms.svc.models import Claim")
    assert result.returncode != 0
    assert "hms.ach.leak -> hms.svc.models" in result.stdout


def test_the_gateway_may_not_reach_around_the_bus(tmp_path: Path) -> None:
    """A gateway that imports the runtime (to read a service's database) breaks the build."""
    result = lint_with_a_planted_import(tmp_path, "gateway/leak.py", "from hms.runtime.host import mesh_of")
    assert result.returncode != 0
    assert "hms.gateway.leak -> hms.runtime.host" in result.stdout


def test_the_types_check_strictly() -> None:
    """mypy --strict over hms/ (configuration in setup.cfg) finds nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout
