#!/bin/sh
# Issue 23's goals, measured serially on an idle machine (see benchmarks/tree/README.md):
# 1. Spec-Bench dev, 3 per category, 128 tokens, greedy: suffix trees vs linear ngram (auto);
# 2. the editing workload (all 20 requests), greedy and T=1: suffix and ngram trees vs plain.
# Each is ONE interleaved `specdec bench` run (methods rotate per question).
set -e
OUT=${OUT:-benchmarks/tree}
TOKENS=${EDIT_TOKENS:-192}
[ -n "$SKIP_SPEC_BENCH" ] || specdec bench --target qwen2.5-coder-0.5b --drafts "ngram@auto,ngram:tree@auto,suffix@auto" \
    --per-category 3 --max-new-tokens 128 --temperatures 0 --threads 2 \
    --no-baselines --no-llamacpp --out "$OUT/spec_bench"
specdec bench --target qwen2.5-coder-0.5b --questions editing --per-category 20 \
    --drafts "ngram@auto,ngram:tree@auto,suffix@auto" --max-new-tokens "$TOKENS" \
    --temperatures 0,1 --threads 2 --no-baselines --no-llamacpp --out "$OUT/editing"
