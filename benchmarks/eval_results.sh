#!/usr/bin/env bash
# The docs/results.md run (see there). BUNDLE defaults to the bundle the pipeline benchmark trains;
# DEFENSES (default: every baseline and MoGU) and MOGU_SHIFTS (default -1,1; empty: none) narrow it, e.g.
# DEFENSES=none,mogu MOGU_SHIFTS= for a new bundle alone. Arguments after OUT go to `mogu eval` (e.g. --dtype float32).
set -euo pipefail
BUNDLE=${1:-runs/bench-bundle}
OUT=${2:-runs/eval-results}
shift $(( $# < 2 ? $# : 2 ))
D=${MOGU_SHARED_DATASETS:-../shared/datasets}
exec mogu eval "$BUNDLE" \
  --harmful "$D/advbench.csv:name=advbench:limit=100" \
  --harmful "$D/xstest_prompts.csv:where=label=unsafe:name=xstest-unsafe:limit=50" \
  --harmful "$D/jailbreak/jbb_attack_prompts.jsonl:where=method=PAIR:name=jbb-pair" \
  --harmful "$D/jailbreak/jbb_attack_prompts.jsonl:where=method=GCG:name=jbb-gcg:limit=50" \
  --benign "$D/xstest_prompts.csv:where=label=safe:name=xstest-safe:limit=100" \
  --benign "$D/just_eval_regular.jsonl:name=just-eval:limit=200" \
  --defense "${DEFENSES:-none,self-reminder,icd,sft,safedecoding,detect-input,mogu-fixed,mogu}" --mogu-shifts="${MOGU_SHIFTS--1,1}" \
  --max-new-tokens 48 --batch-size 16 --out "$OUT" "$@"
