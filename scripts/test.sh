#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: tiny random models plus one
# integration test on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
