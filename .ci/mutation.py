"""Mutation testing of the money path with mutmut, scored per file (docs/mutation.md).

    python .ci/mutation.py             mutate every money-path file, report, fail below the bar
    python .ci/mutation.py --changed   only files changed since the run recorded in docs/mutation-baseline.txt
    python .ci/mutation.py --record    after a full run: record each file's hash and score as the baseline
    python .ci/mutation.py --no-run    score the results already in mutants/ (after `mutmut run NAMES` by hand)

Two groups, each mutmut run with its own tests. The money path — `only_mutate` in setup.cfg's [mutmut] section —
with the flow's tests. The messaging runtime under it (inbox, outbox, relay) — setup.cfg's [mutation:runtime]
section — with the tests that drive those modules directly: every flow test passes through them too, but a
mutant of the relay that survives would cost a run of every flow test, and there are hundreds. That group runs in
a copy of the tree (.mutation/runtime) whose [mutmut] section is the runtime one. mutmut runs for each mutant only
the tests it saw reach the mutated function, and it does not see calls made in background threads (the relay
thread, the deliveries that group-commit, the bus's responders, the payments worker); so each mutant of either
group that survives (but the listed equivalents) is run again here against the group's whole test selection, with
the mutant active, and counts as caught when those tests fail (the recheck).

A mutant counts as caught when a test failed on it (killed), or the type checker refused it; survivors, mutants
no test reaches and timeouts count against the score. Equivalent mutants are listed in docs/mutation.md, each
with its reason, and left out of the score.
"""

from __future__ import annotations

import argparse
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "docs" / "mutation-baseline.txt"
BAR = 0.90
CAUGHT = {"killed", "killed on recheck", "caught by type check"}
MISSED = {"survived", "no tests", "timeout", "suspicious", "segfault", "not checked"}


def lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def selection(tree: Path) -> list[str]:
    """The pytest arguments of a tree's [mutmut] section: the options, then the test files."""
    cfg = configparser.ConfigParser()
    cfg.read(tree / "setup.cfg")
    return lines(cfg["mutmut"]["pytest_add_cli_args"]) + lines(cfg["mutmut"]["pytest_add_cli_args_test_selection"])


def recheck(tree: Path, files: list[str], listed: set[str]) -> None:
    """Run each surviving mutant of `files` (but the `listed` equivalents) against the tree's whole test
    selection; record those caught."""
    from mutmut.stats import status_by_exit_code

    caught: list[str] = []
    for f in files:
        meta = tree / "mutants" / (f + ".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        for name, code in codes.items():
            if status_by_exit_code[code] != "survived" or name in listed:
                continue
            env = {**os.environ, "MUTANT_UNDER_TEST": name, "HMS_TEST_PATIENCE_S": "3"}
            try:
                run = subprocess.run(
                    [sys.executable, "-m", "pytest", *selection(tree)],
                    cwd=tree / "mutants",
                    env=env,
                    capture_output=True,
                    timeout=300,
                )
            except subprocess.TimeoutExpired:
                continue  # a hang is not a catch (mutmut counts it as a timeout)
            if run.returncode == 1:  # tests failed (not a collection or usage error)
                caught.append(name)
    (tree / "mutants" / "rechecked.json").write_text(json.dumps(sorted(caught), indent=1) + "\n")


def groups() -> list[tuple[Path, list[str]]]:
    """(the tree mutmut runs in, the files it mutates there), for each group."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [
        (ROOT, lines(cfg["mutmut"]["only_mutate"])),
        (ROOT / ".mutation" / "runtime", lines(cfg["mutation:runtime"]["only_mutate"])),
    ]


def runtime_tree(tree: Path) -> None:
    """A copy of the source tree whose [mutmut] section mutates the runtime with the runtime's own tests."""
    tree.mkdir(parents=True, exist_ok=True)
    for name in ("hms", "tests", "migrations", "bench"):
        shutil.rmtree(tree / name, ignore_errors=True)
        shutil.copytree(ROOT / name, tree / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "constraints.txt", tree / "constraints.txt")
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    for key, value in cfg["mutation:runtime"].items():
        cfg["mutmut"][key] = value
    with open(tree / "setup.cfg", "w") as f:
        cfg.write(f)


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


def statuses(tree: Path, path: str, listed: set[str]) -> Counter[str]:
    """How many of the file's mutants ended in each mutmut status ("equivalent" for the `listed` ones)."""
    from mutmut.stats import status_by_exit_code

    meta = tree / "mutants" / (path + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    again = tree / "mutants" / "rechecked.json"
    rechecked = set(json.loads(again.read_text())) if again.exists() else set()

    def status(name: str, code: int | None) -> str:
        found = status_by_exit_code[code]
        if found == "survived" and name in rechecked:
            return "killed on recheck"
        return "equivalent" if name in listed and found != "killed" else found

    return Counter(status(name, code) for name, code in codes.items())


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
    baseline = recorded()
    failed = False
    lines_out = []
    listed = equivalents()
    every = [f for _, files in groups() for f in files]
    for tree, files in groups():
        chosen = [f for f in files if not args.changed or baseline.get(f) != digest(f)]
        if not chosen:
            continue
        if not args.no_run:
            if tree != ROOT:
                runtime_tree(tree)
            patterns = [f.removesuffix(".py").replace("/", ".") + ".*" for f in chosen]
            print(f"mutation: mutmut run {' '.join(patterns)}", flush=True)
            env = {**os.environ, "HMS_TEST_PATIENCE_S": "3"}  # a flow that works finishes in well under a second
            run = subprocess.run(
                [sys.executable, "-m", "mutmut", "run", *patterns], cwd=tree, env=env, capture_output=True, text=True
            )
            if run.returncode != 0:
                print(run.stdout[-3000:], run.stderr[-3000:], sep="\n")
                return run.returncode
            recheck(tree, chosen, listed)
        for f in chosen:
            counts = statuses(tree, f, listed)
            s = score(counts)
            failed |= s < BAR
            detail = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
            print(f"mutation: {f}: {s:.1%} caught ({detail}){'' if s >= BAR else f'  BELOW {BAR:.0%}'}")
            lines_out.append(f"{digest(f)}  {f}  {s:.3f}")
    if args.changed and not lines_out:
        print("mutation: no money-path file changed since the recorded run; nothing to mutate")
        return 0
    if args.record:
        header = "# sha256  file  score: the money path as of its last full mutation run (.ci/mutation.py --record)"
        kept = {row.split()[1]: row for row in BASELINE.read_text().splitlines()[1:]} if BASELINE.exists() else {}
        kept.update({row.split()[1]: row for row in lines_out})
        BASELINE.write_text("\n".join([header, *(kept[f] for f in every if f in kept)]) + "\n")
        print(f"mutation: recorded {BASELINE.relative_to(ROOT)}")
    if failed:
        print("mutation: survivors are listed by `mutmut results`; `mutmut show NAME` shows one")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
