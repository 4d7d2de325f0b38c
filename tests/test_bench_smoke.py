"""The benchmark suite runs end to end (quick sizes) and writes its report."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_pass_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    text = out.read_text()
    for figure in (
        "raw blinker send",
        "single-row insert+commit",
        "raw nats-py",
        "sequential awaited js.publish",
        "bare Flask JSON endpoint",
        "split over 3 processes",
        "claims stored",
        "auditors' report",
        "steady",
        "CPU per claim",
    ):
        assert figure in text, figure
    ratios = [float(r) for r in re.findall(r"\| (\d+\.\d+)× \|", text)]
    assert len(ratios) >= 9 and all(r > 0 for r in ratios)
