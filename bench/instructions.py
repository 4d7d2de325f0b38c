"""Machine instructions per claim, counted by valgrind: a figure the machine's load does not move.

    python -m bench.instructions [--claims 40]

CPU time on this shared machine moves by ±20 % between runs of the same code, more than most single changes win.
Instructions do not: valgrind's callgrind counts every instruction the process runs, and two runs of one tree agree
within about 0.2 %. An in-process mesh (SQLite, the in-process bus) takes `--claims` claims one at a time through
the Flask test client, each until its transfer is on the sandbox bank's statement, after ten that warm it up;
counting is switched on (`callgrind_control -i on`) only for the measured claims. Needs valgrind (Debian's
`valgrind` package); a run of 40 claims takes about a minute. To compare two trees, run it in each (the mesh is
imported from the tree the command runs in, e.g. `PYTHONPATH=/other/tree python -m bench.instructions`).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

from bench.cases import one_at_a_time

WARM = 10


def counted(claims: int) -> None:
    """WARM claims, then `claims` claims with callgrind's counting on (this process runs under callgrind)."""

    def counting(on: bool) -> None:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], capture_output=True)

    one_at_a_time(claims, warm=WARM, counting=counting)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=40)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the run valgrind starts
    args = parser.parse_args(argv)
    if args.inside:
        counted(args.claims)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={tmp}/callgrind.out",
                sys.executable,
                "-m",
                "bench.instructions",
                "--inside",
                "--claims",
                str(args.claims),
            ],
            capture_output=True,
            text=True,
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or not found:
        print(run.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"{int(found.group(1)) / args.claims / 1e6:.2f} million instructions per claim ({args.claims} claims)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
