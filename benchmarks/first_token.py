"""Time to the first stdout byte of `specdec generate`, and to exit, over a few runs.

Run it on an idle machine after one warm-up run (the first run builds the converted copy of the
model). Extra arguments go to `specdec generate`:

    python benchmarks/first_token.py --runs 3 -- --threads 2

The import cost alone: `python -X importtime -c "import specdec.cli.generate" 2> imports.txt`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

COMMAND = ["specdec", "generate", "def quicksort(arr):", "--max-new-tokens", "32"]


def time_once(command: list[str]) -> tuple[float, float]:
    """(seconds to the first stdout byte, seconds to exit) of one run of `command`."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.read(1)
    first = time.perf_counter() - start
    process.stdout.read()
    process.wait()
    return first, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("extra", nargs="*", help="arguments for specdec generate (after --)")
    args = parser.parse_args()
    for run in range(args.runs):
        first, total = time_once(COMMAND + args.extra)
        print(f"run {run}: first byte {first:.2f} s, exit {total:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
