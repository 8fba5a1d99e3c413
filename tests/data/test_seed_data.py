"""Checks on the hand-written seed instructions in ``mogu/data/seed.jsonl``.

Schema, counts and split layout, plus a guard that no seed instruction was taken from
(or nearly duplicates) a public benchmark in ``../shared/datasets`` -- the evaluation
sets must stay unseen by training.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from importlib.resources import files

import pytest

from tests.support.overlap import find_overlaps, normalise, shared_datasets_dir

LABELS = {"harmful", "benign", "borderline"}
SPLITS = {"train", "val", "test"}
FIELDS = {"id", "instruction", "label", "category", "split"}
ID_PREFIX = {"harmful": "harm", "benign": "benign", "borderline": "border"}
ID_RE = re.compile(r"^(harm|benign|border)-[a-z0-9]+(?:-[a-z0-9]+)*-\d{3}$")


def load_seed() -> list[dict]:
    resource = files("mogu.data") / "seed.jsonl"
    rows = []
    for lineno, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            row["_line"] = lineno
            rows.append(row)
    return rows



# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def seed() -> list[dict]:
    return load_seed()




# ---------------------------------------------------------------- schema and layout


def test_schema(seed):
    assert seed, "seed.jsonl is empty"
    bad = []
    for row in seed:
        where = f"line {row['_line']}"
        keys = set(row) - {"_line"}
        if keys != FIELDS:
            bad.append(f"{where}: fields {sorted(keys)} != {sorted(FIELDS)}")
            continue
        if not all(isinstance(row[k], str) for k in FIELDS):
            bad.append(f"{where}: every field must be a string")
            continue
        if row["label"] not in LABELS:
            bad.append(f"{where}: label {row['label']!r}")
        if row["split"] not in SPLITS:
            bad.append(f"{where}: split {row['split']!r}")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", row["category"]):
            bad.append(f"{where}: category {row['category']!r}")
        if not ID_RE.match(row["id"]) or not row["id"].startswith(ID_PREFIX.get(row["label"], "?") + "-"):
            bad.append(f"{where}: id {row['id']!r} does not fit label {row['label']!r}")
        text = row["instruction"]
        if text != text.strip() or not 5 <= len(text.split()) <= 40:
            bad.append(f"{where}: instruction must be trimmed and 5-40 words: {text!r}")
    assert not bad, "\n".join(bad)


def test_unique_ids_and_instructions(seed):
    ids = Counter(r["id"] for r in seed)
    assert not [i for i, n in ids.items() if n > 1], f"duplicate ids: {[i for i, n in ids.items() if n > 1]}"
    norms = defaultdict(list)
    for r in seed:
        norms[normalise(r["instruction"])].append(r["id"])
    dup = [v for v in norms.values() if len(v) > 1]
    assert not dup, f"duplicate instructions (after normalisation): {dup}"


def test_each_category_has_one_label(seed):
    labels = defaultdict(set)
    for r in seed:
        labels[r["category"]].add(r["label"])
    mixed = {c: sorted(v) for c, v in labels.items() if len(v) > 1}
    assert not mixed, f"categories used under several labels: {mixed}"


def test_counts(seed):
    by_label = Counter(r["label"] for r in seed)
    cats = defaultdict(set)
    for r in seed:
        cats[r["label"]].add(r["category"])
    assert by_label["harmful"] >= 300, by_label
    assert len(cats["harmful"]) >= 10, sorted(cats["harmful"])
    assert by_label["benign"] >= 300, by_label
    assert len(cats["benign"]) >= 8, sorted(cats["benign"])
    assert by_label["borderline"] >= 150, by_label


def test_every_category_in_val_and_test(seed):
    splits = defaultdict(set)
    for r in seed:
        splits[r["category"]].add(r["split"])
    missing = {c: sorted(SPLITS - s) for c, s in splits.items() if not {"val", "test"} <= s}
    assert not missing, f"categories missing from val/test: {missing}"


def test_split_fractions(seed):
    target = {"train": 0.70, "val": 0.15, "test": 0.15}
    groups = {"all": seed}
    for label in LABELS:
        groups[label] = [r for r in seed if r["label"] == label]
    for name, rows in groups.items():
        counts = Counter(r["split"] for r in rows)
        for split, frac in target.items():
            got = counts[split] / len(rows)
            assert abs(got - frac) <= 0.05, f"{name}: {split} is {got:.3f} of {len(rows)} rows, want {frac}±0.05"


# ---------------------------------------------------------------- no benchmark leakage


def test_no_overlap_with_public_benchmarks(seed, bench_index):
    problems = find_overlaps([(r["id"], r["instruction"]) for r in seed], bench_index)
    assert not problems, (
        f"{len(problems)} seed instruction(s) overlap public benchmarks under {shared_datasets_dir()}:\n"
        + "\n".join(problems)
    )




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
