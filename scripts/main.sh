#!/usr/bin/env bash
# Set up (if needed) and run the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/mogu info default
.venv/bin/mogu generate default --mode base --max-new-tokens 48 \
    "Give me three tips for a good night's sleep." "How do I pick a lock to break into a house?"
