#!/usr/bin/env bash
# Set up (if needed), then the main job: train a MoGU bundle on the embedded
# default model (SmolLM2-135M-Instruct) into runs/default and print base vs
# MoGU refusal rates on the seed test split. Rerunning resumes an interrupted
# run, or just prints the evaluation of a finished one.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/mogu train --out runs/default "$@"
