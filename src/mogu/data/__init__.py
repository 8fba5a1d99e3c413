"""Data files shipped with MoGU (the hand-written seed instructions in ``seed.jsonl``)."""
