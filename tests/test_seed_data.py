"""Checks on the hand-written seed instructions in ``mogu/data/seed.jsonl``.

Schema, counts and split layout, plus a guard that no seed instruction was taken from
(or nearly duplicates) a public benchmark in ``../shared/datasets`` -- the evaluation
sets must stay unseen by training.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import pytest

LABELS = {"harmful", "benign", "borderline"}
SPLITS = {"train", "val", "test"}
FIELDS = {"id", "instruction", "label", "category", "split"}
ID_PREFIX = {"harmful": "harm", "benign": "benign", "borderline": "border"}
ID_RE = re.compile(r"^(harm|benign|border)-[a-z0-9]+(?:-[a-z0-9]+)*-\d{3}$")

JACCARD_MIN = 0.8  # word-set Jaccard at or above this counts as a near duplicate
CONTAIN_MIN_WORDS = 6  # verbatim containment is only checked for texts this long
MIN_CHARS = 10  # benchmark strings shorter than this are ids, labels, numbers
BENCH_SUFFIXES = {".csv", ".json", ".jsonl", ".txt"}

csv.field_size_limit(2**31 - 1)


# ---------------------------------------------------------------- helpers


def normalise(text: str) -> str:
    """Lowercase, drop punctuation (apostrophes vanish, other marks become spaces), collapse spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"['\u2018\u2019`]", "", text)
    text = re.sub(r"[\W_]+", " ", text)
    return " ".join(text.split())


def load_seed() -> list[dict]:
    resource = files("mogu.data") / "seed.jsonl"
    rows = []
    for lineno, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            row["_line"] = lineno
            rows.append(row)
    return rows


def shared_datasets_dir() -> Path:
    env = os.environ.get("MOGU_SHARED_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def _strings(obj):
    """Every string anywhere inside a parsed JSON value."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def iter_benchmark_strings(path: Path):
    """All string fields of every row of one benchmark file (every column, nothing skipped)."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        if suffix == ".csv":
            for row in csv.reader(fh):
                yield from row
        elif suffix == ".jsonl":
            for line in fh:
                if line.strip():
                    yield from _strings(json.loads(line))
        elif suffix == ".json":
            yield from _strings(json.load(fh))
        else:  # .txt: one item per line
            yield from fh


@dataclass
class BenchmarkIndex:
    """Normalised benchmark texts with an inverted index (word -> text ids) for fast near-dup search."""

    texts: list[str] = field(default_factory=list)  # normalised
    tokens: list[frozenset] = field(default_factory=list)
    source: list[str] = field(default_factory=list)  # file, relative to the datasets dir
    postings: dict = field(default_factory=lambda: defaultdict(list))
    exact: dict = field(default_factory=dict)  # normalised text -> text id
    head6: dict = field(default_factory=lambda: defaultdict(list))  # first 6 words -> text ids
    blobs: dict = field(default_factory=dict)  # file -> all its normalised texts joined

    def add(self, raw: str, source: str) -> None:
        if len(raw.strip()) < MIN_CHARS:
            return
        norm = normalise(raw)
        if not norm:
            return
        tid = len(self.texts)
        self.texts.append(norm)
        toks = frozenset(norm.split())
        self.tokens.append(toks)
        self.source.append(source)
        for w in toks:
            self.postings[w].append(tid)
        self.exact.setdefault(norm, tid)
        words = norm.split()
        if len(words) >= CONTAIN_MIN_WORDS:
            self.head6[" ".join(words[:CONTAIN_MIN_WORDS])].append(tid)

    def finish(self) -> "BenchmarkIndex":
        by_file = defaultdict(list)
        for t, s in zip(self.texts, self.source):
            by_file[s].append(f" {t} ")
        self.blobs = {s: "\n".join(ts) for s, ts in by_file.items()}
        return self

    @classmethod
    def from_dir(cls, root: Path) -> "BenchmarkIndex":
        index = cls()
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in BENCH_SUFFIXES:
                rel = path.relative_to(root).as_posix()
                for s in iter_benchmark_strings(path):
                    index.add(s, rel)
        return index.finish()

    def near_duplicates(self, norm: str, threshold: float = JACCARD_MIN) -> list[tuple[int, float]]:
        """Benchmark texts whose word-set Jaccard with ``norm`` is >= threshold.

        Prefix filter: if J(A, B) >= t then B holds at least ceil(t*|A|) words of A, so B
        contains at least one of ANY |A| - ceil(t*|A|) + 1 words of A; probing with the
        rarest ones keeps the candidate set tiny.
        """
        a = frozenset(norm.split())
        if not a:
            return []
        need = math.ceil(threshold * len(a) - 1e-9)
        probes = sorted(a, key=lambda w: (len(self.postings.get(w, ())), w))[: len(a) - need + 1]
        candidates = set()
        for w in probes:
            candidates.update(self.postings.get(w, ()))
        lo, hi = threshold * len(a) - 1e-9, len(a) / threshold + 1e-9
        hits = []
        for tid in candidates:
            b = self.tokens[tid]
            if not lo <= len(b) <= hi:
                continue
            inter = len(a & b)
            j = inter / (len(a) + len(b) - inter)
            if j >= threshold:
                hits.append((tid, j))
        return hits

    def contained_in(self, norm: str) -> list[str]:
        """Files with a benchmark text that contains ``norm`` verbatim (whole words)."""
        if len(norm.split()) < CONTAIN_MIN_WORDS:
            return []
        needle = f" {norm} "
        return [s for s, blob in self.blobs.items() if needle in blob]

    def contains(self, norm: str) -> list[int]:
        """Benchmark texts (>= 6 words) that appear verbatim (whole words) inside ``norm``."""
        words = norm.split()
        padded = f" {norm} "
        hits = []
        for i in range(len(words) - CONTAIN_MIN_WORDS + 1):
            for tid in self.head6.get(" ".join(words[i : i + CONTAIN_MIN_WORDS]), ()):
                if f" {self.texts[tid]} " in padded:
                    hits.append(tid)
        return hits


def find_overlaps(seeds: list[tuple[str, str]], index: BenchmarkIndex) -> list[str]:
    """(seed id, instruction) pairs -> one message per seed that overlaps a benchmark text."""
    problems = []
    for sid, text in seeds:
        norm = normalise(text)
        if norm in index.exact:
            tid = index.exact[norm]
            problems.append(f"{sid}: exact match in {index.source[tid]}: {index.texts[tid][:120]!r}")
            continue
        dups = index.near_duplicates(norm)
        if dups:
            tid, j = max(dups, key=lambda h: h[1])
            problems.append(
                f"{sid}: near duplicate (Jaccard {j:.2f}) in {index.source[tid]}: {index.texts[tid][:120]!r}"
            )
            continue
        inside = index.contained_in(norm)
        if inside:
            problems.append(f"{sid}: appears verbatim inside a text in {', '.join(inside)}")
            continue
        wraps = index.contains(norm)
        if wraps:
            tid = wraps[0]
            problems.append(f"{sid}: contains benchmark text from {index.source[tid]}: {index.texts[tid][:120]!r}")
    return problems


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def seed() -> list[dict]:
    return load_seed()


@pytest.fixture(scope="module")
def bench_index() -> BenchmarkIndex:
    root = shared_datasets_dir()
    if not root.is_dir():
        pytest.skip(f"public benchmark folder not found: {root} (set MOGU_SHARED_DATASETS)")
    index = BenchmarkIndex.from_dir(root)
    if not index.texts:
        pytest.skip(f"no benchmark texts under {root}")
    return index


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


MORE_ROWS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "more_seed_rows.jsonl"
ATTACK_FRAMINGS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "attack_framings.json"


def test_more_seed_rows_fit_the_seed_data(tmp_path):
    """The extra rows of an experiment (docs/TRAINING.md, "Twice the seed data") load after the seed rows
    as one data file: same schema, ids and instructions not repeated."""
    from mogu.train.data import load_records

    combined = tmp_path / "more.jsonl"
    combined.write_text((files("mogu.data") / "seed.jsonl").read_text(encoding="utf-8")
                        + MORE_ROWS.read_text(encoding="utf-8"), encoding="utf-8")
    records = load_records(combined)
    assert len(records) == len(load_seed()) + len(MORE_ROWS.read_text(encoding="utf-8").splitlines())


def test_more_seed_rows_do_not_overlap_public_benchmarks(bench_index):
    rows = [json.loads(line) for line in MORE_ROWS.read_text(encoding="utf-8").splitlines() if line.strip()]
    problems = find_overlaps([(r["id"], r["instruction"]) for r in rows], bench_index)
    assert rows and not problems, "\n".join(problems)


def test_framings_do_not_overlap_public_benchmarks(bench_index):
    """The framings of training/augment.py were written for the project, not taken from a jailbreak collection."""
    from mogu.train.augment import TRAIN_FRAMINGS, VAL_FRAMINGS, frame

    framings = {**TRAIN_FRAMINGS, **VAL_FRAMINGS}
    problems = find_overlaps([(name, frame(t, "Zebras?")) for name, t in framings.items()], bench_index)
    assert not problems, "\n".join(problems)


def test_attack_framings_wrap_one_request_and_do_not_overlap_public_benchmarks(bench_index):
    """benchmarks/data/attack_framings.json (framed_validation.py --attack) was written for the project."""
    from mogu.train.augment import frame

    framings = json.loads(ATTACK_FRAMINGS.read_text(encoding="utf-8"))
    assert len(framings) >= 20
    for name, template in framings.items():
        assert template.count("{request}") == 1 and template.count("{") == 1, name
        assert 60 <= len(template.split()) <= 170, name  # long: that is what they measure
    problems = find_overlaps([(name, frame(t, "Zebras?")) for name, t in framings.items()], bench_index)
    assert not problems, "\n".join(problems)


def test_persuasive_training_framings_wrap_one_request_apart_from_the_validation_ones():
    """The long persuasive training framings (framing.persuasive_fraction) were written for the project, apart
    from the validation ones (framed_validation.py --attack)."""
    from mogu.train.augment import TRAIN_FRAMINGS, VAL_FRAMINGS, frame, persuasive_framings

    framings = persuasive_framings()
    validation = json.loads(ATTACK_FRAMINGS.read_text(encoding="utf-8"))
    assert len(framings) >= 20 and not set(framings) & (set(validation) | set(TRAIN_FRAMINGS) | set(VAL_FRAMINGS))
    for name, template in framings.items():
        assert template.count("{request}") == 1 and template.count("{") == 1, name
    index = BenchmarkIndex()
    for name, template in validation.items():
        index.add(frame(template, "Zebras?"), f"attack_framings.json:{name}")
    problems = find_overlaps([(name, frame(t, "Zebras?")) for name, t in framings.items()], index.finish())
    assert not problems, "\n".join(problems)


def test_persuasive_training_framings_do_not_overlap_public_benchmarks(bench_index):
    from mogu.train.augment import frame, persuasive_framings

    problems = find_overlaps([(name, frame(t, "Zebras?")) for name, t in persuasive_framings().items()], bench_index)
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
