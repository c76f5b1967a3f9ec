"""The benchmark scripts' ratio table: pooled and per-question ratios from records."""

from specdec.bench.ratios import pooled_rate, ratio_table
from specdec.bench.runner import Record


def _record(method: str, question: str, tokens: int, seconds: float, stats=None) -> Record:
    return Record(method, question, "qa", 0.0, 0, 5, [1] * tokens, seconds, stats)


def test_ratios_against_reference_and_anchor():
    records = [_record("plain", "a", 10, 1.0), _record("plain", "b", 10, 4.0),
               _record("fast", "a", 20, 1.0, {"target_calls": 10, "generated": 20,
                                              "drafted": 8, "accepted": 6}),
               _record("fast", "b", 10, 2.0),
               _record("anchor", "a", 40, 1.0), _record("anchor", "b", 10, 1.0)]
    assert pooled_rate(records[:2]) == 4.0
    lines = ratio_table(records, ["plain", "fast"], (0.0,), "plain", "anchor")
    fast = lines[3].split(" | ")
    assert fast[2] == "10.00"  # 30 tokens in 3 s
    assert fast[3] == "2.50x" and fast[4] == "0.40x"  # against 4 and 25 tok/s
    assert fast[5] == "2.00x"  # per question: 2.0 and 2.0
    assert fast[6] == "2.00" and fast[7].startswith("0.750")
