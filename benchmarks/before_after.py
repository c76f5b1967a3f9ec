"""Two checkouts of specdec side by side in ONE interleaved run (issue 30): is the speed
unchanged within noise, and are greedy outputs identical?

--before (its src/ by git archive into a temporary directory) and --after (default: this
working tree) run per dtype in worker processes of their own (PYTHONPATH=<checkout>/src, same
threads), loading the target once and answering JSON lines over a pipe; a dtype a checkout
cannot load (6ca3685 has no 'gguf' runner) is skipped for it. Per question, dtype and
temperature each method runs on both sides, methods rotating and sides alternating (ABBA),
with the same prompt ids and seed. NAME.jsonl grows per record, NAME.md/.json per question.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDES = ("before", "after")


def worker(args: argparse.Namespace) -> int:
    """One checkout and dtype; uses only APIs that 6ca3685 and main both have."""
    pipe = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the library prints goes to stderr; stdout carries JSON only
    sys.stdout = sys.stderr
    import torch

    from specdec.bench.methods import PLAIN, specdec_method
    from specdec.drafters.factory import build_drafter, build_gamma, split_gammas
    from specdec.errors import UsageError
    from specdec.models.loading import load_model
    from specdec.prompts import user_prompt_ids
    from specdec.sampling import SamplingParams

    def send(**message) -> None:
        pipe.write(json.dumps({**message, "cpu": time.process_time()}) + "\n")

    torch.set_num_threads(args.threads)

    @functools.cache  # one copy per (model, pack), as specdec bench loads
    def loader(spec: str, pack: bool = True):
        return load_model(spec, dtype=args.dtype, threads=args.threads, pack=pack)

    try:
        target = loader(args.target)
    except UsageError as error:  # a dtype this checkout does not know
        send(skip=str(error))
        return 0
    methods = {PLAIN: specdec_method(target, None, 0, PLAIN)}
    for entry in args.drafts.split(","):
        spec, gammas = split_gammas(entry)
        for gamma in gammas or [g.strip() for g in args.gammas.split(",")]:
            name = f"specdec {spec} g={gamma}"
            methods[name] = specdec_method(target, build_drafter(spec, target, loader),
                                           build_gamma(gamma), name, spec, gamma)
    warm_up = user_prompt_ids(target.tokenizer, "Write a haiku about the sea.")
    for method in methods.values():  # lazy allocation and kernel choice: before any timing
        for temperature in (0.0, 1.0):
            method.run(warm_up, SamplingParams(temperature=temperature, seed=0,
                                               max_new_tokens=8, coupled=False))
    runner = type(getattr(target, "_model", target)).__name__
    send(methods=list(methods), torch=torch.__version__,
         runner=f"{runner} {getattr(getattr(target, 'model', None), 'dtype', '')}")
    for line in sys.stdin:
        ask = json.loads(line)
        if "text" in ask:
            send(ids=user_prompt_ids(target.tokenizer, ask["text"]))
            continue
        params = SamplingParams(temperature=ask["temperature"], seed=ask["seed"],
                                max_new_tokens=ask["max_new_tokens"], coupled=False)
        try:  # coupled=False: Algorithm 1's rule, as specdec bench samples
            out = methods[ask["method"]].run(ask["ids"], params)
            send(tokens=out.tokens, seconds=out.seconds, target_calls=out.stats.target_calls,
                 drafted=out.stats.drafted, accepted=out.stats.accepted, error=None)
        except Exception as error:  # one failure must not lose the run
            send(tokens=[], seconds=0.0, target_calls=0, drafted=0, accepted=0,
                 error=f"{type(error).__name__}: {error}")
    return 0


class Worker:
    def __init__(self, side: str, src: str, dtype: str, args: argparse.Namespace):
        self.side, self.dtype, self.cpu = side, dtype, 0.0
        command = [sys.executable, "-u", str(Path(__file__).resolve()), "--worker",
                   "--dtype", dtype, "--target", args.target, "--threads", str(args.threads),
                   "--drafts", args.drafts, "--gammas", args.gammas]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONPATH": src})

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} {self.dtype} worker died (its stderr above)")
        self.cpu = (answer := json.loads(line))["cpu"]  # for the meter: the worker's CPU s
        return answer

    def ask(self, **request) -> dict:
        print(json.dumps(request), file=self.proc.stdin, flush=True)
        return self.read()


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def checkout(rev: str | None, tmp: str) -> dict:
    """src/ of `rev` extracted under tmp, or this working tree's (rev None)."""
    if rev is None:
        dirty = " + uncommitted changes in src/" if git("status", "--porcelain", "src") else ""
        return {"rev": "working tree", "commit": git("rev-parse", "HEAD") + dirty,
                "src": str(ROOT / "src")}
    commit, dest = git("rev-parse", "--verify", f"{rev}^{{commit}}"), tempfile.mkdtemp(dir=tmp)
    subprocess.run(f"git -C {shlex.quote(str(ROOT))} archive {commit} src | tar -x -C {dest}",
                   shell=True, check=True)
    return {"rev": rev, "commit": commit, "src": str(Path(dest) / "src")}


def summary(records: list[dict], keys: list[tuple[str, float, str]]) -> Iterator[dict]:
    """Per key: totals on the questions both sides completed (or a side's own), the ratio."""
    from coupled import gain  # paired bootstrap of the ratio of totals, 2000 resamples

    for key in keys:  # (dtype, temperature, method)
        side = {s: {r["question_id"]: r for r in records if not r["error"] and
                    (r["dtype"], r["temperature"], r["method"], r["side"]) == (*key, s)}
                for s in SIDES}
        both = sorted(side["before"].keys() & side["after"].keys())
        row = dict(zip(("dtype", "temperature", "method"), key, strict=True), questions=len(both))
        for s in SIDES:
            picked = [side[s][q] for q in (both or side[s])]
            tokens, seconds, calls = (sum(r[k] for r in picked)
                                      for k in ("n_tokens", "seconds", "target_calls"))
            row[f"tok_s_{s}"] = tokens / seconds if seconds else None
            row[f"tokens_per_call_{s}"] = tokens / calls if calls else None
        if both:
            pairs = [[argparse.Namespace(repeat=0, **side[s][q]) for q in both] for s in SIDES]
            row["ratio"], row["low"], row["high"] = gain(*pairs)
            row["same_tokens"] = sum(side["before"][q]["tokens"] == side["after"][q]["tokens"]
                                     for q in both)
        yield row


def report(doc: dict) -> str:
    def num(value, spec=".2f", unit=""):
        return "-" if value is None else format(value, spec) + unit

    rev, env = doc["revisions"], doc["environment"]
    lines = [f"# Before/after: {rev['before']['rev']} vs {rev['after']['rev']}", "",
             f"`{doc['command']}`", "",
             f"- before {rev['before']['commit']}, after {rev['after']['commit']}",
             f"- {env['cpu']}, torch {env['torch']}, Python {env['python']}, "
             f"{doc['config']['threads']} threads per worker",
             f"- {doc['done']} of {doc['questions']} questions in {doc['minutes']:.1f} min; "
             f"{doc['load']['text']}", *[f"- {line}" for line in doc["notes"]], "",
             "| dtype | T | method | questions | tok/s before | tok/s after | after/before "
             "| 95% interval | tokens/call before | after | identical outputs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["summary"]:
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]" if "low" in r else "-"
        same = f"{r['same_tokens']}/{r['questions']}" if "same_tokens" in r else "-"
        lines.append(f"| {r['dtype']} | {r['temperature']:g} | {r['method']} | "
                     f"{r['questions']} | {num(r['tok_s_before'])} | {num(r['tok_s_after'])} | "
                     f"{num(r.get('ratio'), '.3f', 'x')} | {interval} | "
                     f"{num(r['tokens_per_call_before'])} | {num(r['tokens_per_call_after'])} "
                     f"| {same} |")
    return "\n".join(lines + ["", "tok/s: total tokens / total seconds (prefill included) of "
                              "the questions both sides completed; interval: paired bootstrap "
                              "over questions (2000 resamples); T=0: all should be identical\n"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--before", default="6ca3685", help="a git revision (default 6ca3685)")
    p.add_argument("--after", default=None, help="a git revision (default: this working tree)")
    p.add_argument("--target", default="qwen2.5-coder-0.5b")
    p.add_argument("--dtype", default="bfloat16", help="comma-separated, e.g. bfloat16,gguf")
    p.add_argument("--drafts", default="ngram", help="SPEC[@G1/G2],... (generate's default)")
    p.add_argument("--gammas", default="auto", help="for specs without @ (default auto)")
    for flag, default in (("--per-category", 3), ("--max-new-tokens", 128), ("--threads", 2)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--max-minutes", type=float, help="start no question after this long")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="before_after", help="output file stem")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    from specdec.bench.suite import machine_load
    from specdec.bench.workloads import load_questions
    from specdec.machine import OtherJobsMeter, load_average, load_text

    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    temperatures = [float(t) for t in args.temperatures.split(",")]
    questions = load_questions("spec-bench", per_category=args.per_category)
    args.out.mkdir(parents=True, exist_ok=True)
    journal = args.out / f"{args.name}.jsonl"
    journal.unlink(missing_ok=True)
    records: list[dict] = []
    workers: dict[tuple[str, str], Worker] = {}
    started: list[Worker] = []  # skipped ones too: their CPU time is this run's
    doc = {"command": shlex.join([Path(sys.executable).name, *sys.argv] if argv is None
                                 else argv), "config": {**vars(args), "out": str(args.out)},
           "questions": len(questions), "notes": [], "done": 0}

    def write() -> None:
        other = meter.other_cores()
        load = machine_load(load_before, load_average(), args.threads, other_cores=other)
        load["text"] = load["warning"] or (
            f"other processes held {'?' if other is None else f'{other:.2f}'} cores on average;"
            f" load average {load_text(load_before)} before, {load_text(load_average())} now")
        keys = [(d, t, m) for d in dtypes for t in temperatures for m in methods]
        doc.update(minutes=(time.perf_counter() - start) / 60, load=load, records=records,
                   summary=list(summary(records, keys)))
        (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=1))
        (args.out / f"{args.name}.md").write_text(report(doc))

    def run_question(qi: int, question, dtype: str, sides: list[str]) -> None:
        """Every temperature and method on both sides: methods rotating, sides ABBA."""
        ids = {s: workers[s, dtype].ask(text=question.text)["ids"] for s in sides}
        if len({tuple(v) for v in ids.values()}) > 1:  # both sides get the after side's
            doc["notes"].append(f"{question.question_id} {dtype}: the prompt ids differ")
        prompt = ids[sides[-1]] if sides else []
        for t, temperature in enumerate(temperatures if sides else []):
            block = qi * len(temperatures) + t
            shift = block % len(methods)
            for j, method in enumerate(methods[shift:] + methods[:shift]):
                for side in sides if (block + j) % 2 == 0 else sides[::-1]:
                    answer = workers[side, dtype].ask(
                        method=method, ids=prompt, seed=qi, temperature=temperature,
                        max_new_tokens=args.max_new_tokens)
                    record = {"dtype": dtype, "side": side, "method": method,
                              "temperature": temperature, "question_id": question.question_id,
                              "category": question.category, "seed": qi,
                              "prompt_tokens": len(prompt), "n_tokens": len(answer["tokens"]),
                              **answer}
                    records.append(record)
                    with journal.open("a", encoding="utf-8") as out:
                        out.write(json.dumps(record) + "\n")
                    what = record["error"] or f"{record['n_tokens']} tokens, " \
                        f"{record['n_tokens'] / max(record['seconds'], 1e-9):.2f} tok/s"
                    print(f"[{(time.perf_counter() - start) / 60:5.1f} min] q{qi + 1}/"
                          f"{len(questions)} {question.category} {dtype} T={temperature:g} "
                          f"{side:6} {method}: {what}", flush=True)

    with tempfile.TemporaryDirectory(prefix="specdec-before-after-") as tmp:
        doc["revisions"] = revisions = {"before": checkout(args.before, tmp),
                                        "after": checkout(args.after, tmp)}
        load_before, start = load_average(), time.perf_counter()
        meter = OtherJobsMeter(own=lambda: time.process_time() + sum(w.cpu for w in started))
        try:
            started.extend(Worker(side, revisions[side]["src"], dtype, args)
                           for dtype in dtypes for side in SIDES)
            for w in started:
                hello = w.read()
                line = f"{w.side} ({revisions[w.side]['commit'][:10]}) {w.dtype}: " + (
                    f"skipped: {hello['skip']}" if "skip" in hello else
                    f"{hello['runner']}, methods {', '.join(hello['methods'])}")
                print(line, flush=True)
                if "skip" in hello:
                    doc["notes"].append(line)
                    continue
                workers[w.side, w.dtype], methods = w, hello["methods"]
                cpu = [x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text()
                       .splitlines() if x.startswith("model name")] or [platform.machine()]
                doc["environment"] = {"cpu": cpu[0], "python": platform.python_version(),
                                      "torch": hello["torch"]}
            if not workers:
                raise SystemExit("no checkout could load any of the dtypes")
            for qi, question in enumerate(questions):
                limit = float("inf") if args.max_minutes is None else 60 * args.max_minutes
                if doc["done"] and time.perf_counter() - start > limit:
                    doc["notes"].append(f"time limit of {args.max_minutes:g} min reached")
                    break
                for dtype in dtypes:
                    run_question(qi, question, dtype, [s for s in SIDES if (s, dtype) in workers])
                doc["done"] = qi + 1
                write()
        finally:
            for w in started:
                w.proc.stdin.close()  # a worker ends after its current generation
            if "environment" in doc:
                write()
    print(report(doc), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
