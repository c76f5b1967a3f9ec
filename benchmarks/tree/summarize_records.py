"""The bench's own tables from a run's journal (records.jsonl) alone.

For a run whose report was not written (the journal is appended as each generation ends):
the leaderboard and the theory table come from the same `summarize` the bench uses; what the
journal does not hold (the roofline, the load measured around the run) is not reported.

    python benchmarks/tree/summarize_records.py benchmarks/tree/spec_bench/records.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from specdec.bench.methods import Method
from specdec.bench.metrics import summarize
from specdec.bench.report import leaderboard, theory_table
from specdec.bench.runner import Record


def method_of(name: str) -> Method:
    """The journal names methods 'specdec DRAFTER g=GAMMA' or 'specdec plain'."""
    if name == "specdec plain":
        return Method(name, "specdec", run=None)  # type: ignore[arg-type]
    drafter, _, gamma = name.removeprefix("specdec ").rpartition(" g=")
    return Method(name, "specdec", run=None, drafter=drafter, gamma=gamma)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", help="a bench run's records.jsonl")
    path = parser.parse_args().records
    records = [Record(**json.loads(line)) for line in Path(path).read_text().splitlines()]
    methods = [method_of(name) for name in dict.fromkeys(r.method for r in records)]
    summaries = summarize(records, methods)
    for temperature in sorted({s.temperature for s in summaries}):
        chosen = [s for s in summaries if s.temperature == temperature]
        print(f"## temperature {temperature:g} ({len({r.question_id for r in records})} "
              f"questions)\n")
        print("\n".join(leaderboard(chosen)))
        print("\n".join(theory_table(chosen)))


if __name__ == "__main__":
    main()
