"""Data shipped with MoGU: the instruction set written for the project, ``instructions.jsonl.gz`` (README.md)."""
