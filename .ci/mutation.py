"""Mutation testing of the money path with mutmut, scored per file (docs/mutation.md).

    python .ci/mutation.py             mutate every money-path file, report, fail below the bar
    python .ci/mutation.py --changed   only files changed since the run recorded in docs/mutation-baseline.txt
    python .ci/mutation.py --record    after a full run: record each file's hash and score as the baseline
    python .ci/mutation.py --no-run    score the results already in mutants/ (after `mutmut run NAMES` by hand)

The money-path files are `only_mutate` in setup.cfg's [mutmut] section. A mutant counts as caught when a test
failed on it (killed), or the type checker refused it; survivors, mutants no test reaches and timeouts count
against the score. Equivalent mutants are kept out with `# pragma: no mutate` and a reason on the line.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "docs" / "mutation-baseline.txt"
BAR = 0.90
CAUGHT = {"killed", "caught by type check"}
MISSED = {"survived", "no tests", "timeout", "suspicious", "segfault", "not checked"}


def money_path() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [line.strip() for line in cfg["mutmut"]["only_mutate"].splitlines() if line.strip()]


def digest(path: str) -> str:
    return hashlib.sha256((ROOT / path).read_bytes()).hexdigest()


def recorded() -> dict[str, str]:
    if not BASELINE.exists():
        return {}
    rows = (line.split() for line in BASELINE.read_text().splitlines() if line and not line.startswith("#"))
    return {row[1]: row[0] for row in rows}


def equivalents() -> set[str]:
    """Mutants docs/mutation.md lists as equivalent (a table row per mutant, with its reason)."""
    text = (ROOT / "docs" / "mutation.md").read_text()
    return set(re.findall(r"^\| `(hms\.[^`]+__mutmut_\d+)` \|", text, flags=re.MULTILINE))


def statuses(path: str, listed: set[str]) -> Counter[str]:
    """How many of the file's mutants ended in each mutmut status ("equivalent" for the `listed` ones)."""
    from mutmut.stats import status_by_exit_code

    meta = ROOT / "mutants" / (path + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    return Counter(
        "equivalent" if name in listed and status_by_exit_code[code] != "killed" else status_by_exit_code[code]
        for name, code in codes.items()
    )


def score(counts: Counter[str]) -> float:
    caught = sum(counts[s] for s in CAUGHT)
    total = caught + sum(counts[s] for s in MISSED)
    return caught / total if total else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changed", action="store_true", help="only files changed since the recorded run")
    parser.add_argument("--record", action="store_true", help="record hashes and scores as the new baseline")
    parser.add_argument("--no-run", action="store_true", help="score the results already in mutants/")
    args = parser.parse_args()
    files = money_path()
    if args.changed:
        baseline = recorded()
        files = [f for f in files if baseline.get(f) != digest(f)]
        if not files:
            print("mutation: no money-path file changed since the recorded run; nothing to mutate")
            return 0
    if not args.no_run:
        patterns = [f.removesuffix(".py").replace("/", ".") + ".*" for f in files]
        print(f"mutation: mutmut run {' '.join(patterns)}", flush=True)
        env = {**os.environ, "HMS_TEST_PATIENCE_S": "3"}  # a flow that works finishes in well under a second here
        run = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", *patterns], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
            return run.returncode
    failed = False
    lines = []
    listed = equivalents()
    for f in files:
        counts = statuses(f, listed)
        s = score(counts)
        failed |= s < BAR
        detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        print(f"mutation: {f}: {s:.1%} caught ({detail}){'' if s >= BAR else f'  BELOW {BAR:.0%}'}")
        lines.append(f"{digest(f)}  {f}  {s:.3f}")
    if args.record:
        header = "# sha256  file  score: the money path as of its last full mutation run (.ci/mutation.py --record)"
        BASELINE.write_text("\n".join([header, *lines]) + "\n")
        print(f"mutation: recorded {BASELINE.relative_to(ROOT)}")
    if failed:
        print("mutation: survivors are listed by `mutmut results`; `mutmut show NAME` shows one")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
