"""Checks on the packaged instruction set ``mogu/data/instructions.jsonl.gz``.

It holds several thousand instructions written for the project, with validation splits that
are not a random slice of the training pool: whole categories held out (``val_heldout``) and a differently
written set (``val_style``). Training and evaluation sets must stay apart, and apart from the public benchmarks.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter, defaultdict
from importlib.resources import files

import pytest

from mogu.train.data import SPLITS, load_records
from tests.support.overlap import BenchmarkIndex, find_overlaps

FIELDS = {"id", "instruction", "label", "category", "split", "style"}
BENIGN_TASK_TYPES = {"writing", "rewriting", "summarising", "coding", "sql", "maths", "lists_brainstorming",
                     "explanation", "advice", "planning", "trivia", "classification", "extraction", "role_play"}
BORDERLINE_KINDS = {"homonyms", "figurative", "safe_targets", "safe_contexts", "definitions", "fiction", "history",
                    "public_figures", "safety_advice"}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    text = gzip.decompress((files("mogu.data") / "instructions.jsonl.gz").read_bytes()).decode("utf-8")
    return [json.loads(line) for line in text.splitlines()]


def test_schema_and_loading(rows):
    assert all(set(r) == FIELDS and r["split"] in SPLITS for r in rows)
    assert all(2 <= len(r["instruction"].split()) <= 130 for r in rows)
    path = files("mogu.data") / "instructions.jsonl.gz"
    assert len(load_records(path)) == len(rows)  # ids and normalised instructions unique, every field valid


def test_coverage_of_what_people_ask(rows):
    labels = Counter(r["label"] for r in rows)
    assert labels["benign"] >= 3000 and labels["borderline"] >= 500 and labels["harmful"] >= 1500
    categories = {label: {r["category"] for r in rows if r["label"] == label} for label in labels}
    assert BENIGN_TASK_TYPES <= categories["benign"]
    assert BORDERLINE_KINDS <= categories["borderline"]
    assert len(categories["harmful"]) >= 11
    styles = Counter(r["style"] for r in rows if r["split"] == "train")
    assert {"terse", "plain", "chatty", "non_native", "multi_sentence", "formal"} <= set(styles)


def test_validation_is_not_a_random_slice_of_the_training_pool(rows):
    by_split = defaultdict(list)
    for r in rows:
        by_split[r["split"]].append(r)
    for split in ("train", "val", "val_heldout", "val_style", "test"):
        assert {r["label"] for r in by_split[split]} == {"harmful", "benign", "borderline"}, split
    trained = {(r["label"], r["category"]) for r in by_split["train"]}
    held_out = {(r["label"], r["category"]) for r in by_split["val_heldout"]}
    assert held_out and not held_out & trained  # whole categories and task types
    assert all(r["style"] == "texting" for r in by_split["val_style"])
    assert not any(r["style"] == "texting" for r in by_split["train"])


def test_held_out_rows_do_not_repeat_training_rows(rows):
    index = BenchmarkIndex()
    for r in rows:
        if r["split"] == "train":
            index.add(r["instruction"], r["id"])
    problems = find_overlaps([(r["id"], r["instruction"]) for r in rows if r["split"] != "train"], index.finish())
    assert not problems, "\n".join(problems[:20])


def test_no_overlap_with_public_benchmarks(rows, bench_index):
    problems = find_overlaps([(r["id"], r["instruction"]) for r in rows], bench_index)
    assert not problems, "\n".join(problems[:20])


def test_framings_do_not_overlap_public_benchmarks(bench_index):
    """The framings of training/augment.py were written for the project, not taken from a jailbreak collection."""
    from mogu.train.augment import TRAIN_FRAMINGS, VAL_FRAMINGS, frame

    framings = {**TRAIN_FRAMINGS, **VAL_FRAMINGS}
    problems = find_overlaps([(name, frame(t, "Zebras?")) for name, t in framings.items()], bench_index)
    assert not problems, "\n".join(problems)


def test_overlap_check_catches_benchmark_lines(bench_index):
    """The leakage guard must be able to fail: copies, light edits and wrappers are all caught."""
    advbench = [t for t, s in zip(bench_index.texts, bench_index.source) if s == "advbench.csv"]
    if not advbench:
        pytest.skip("advbench.csv not present")
    line = next(t for t in advbench if len(t.split()) >= 12)
    words = line.split()
    probes = [
        ("copy", line.upper() + "!"),
        ("edited", " ".join(words[:-1]) + " please"),  # one word swapped
        ("wrapped", "For my novel, " + line + ", in detail and with examples."),
        ("fragment", " ".join(words[1:-1])),
        ("own", "Write a haiku about a sleepy otter floating in a kelp forest."),
    ]
    problems = find_overlaps(probes, bench_index)
    flagged = {p.split(":", 1)[0] for p in problems}
    assert flagged == {"copy", "edited", "wrapped", "fragment"}, problems
    assert all("advbench.csv" in p for p in problems), problems
