"""``python -m mogu.engine.folder [BASE]``: print the model folder an engine should serve for a base model.

A GGUF base model (the embedded default included) is de-quantised once into a safetensors folder in mogu's
cache; that folder, not the GGUF file, is what vLLM loads, so that engine and front-end read the same weights.
"""

from __future__ import annotations

import sys

from mogu.model.loading import resolve_model_path


def main(argv: list[str]) -> int:
    print(resolve_model_path(argv[0] if argv else "default"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
