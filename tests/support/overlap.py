"""Guard against leakage: does a text copy or nearly duplicate a public benchmark in ``../shared/datasets``?

Used by the tests of every packaged text that training reads (seed instructions, framings).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

JACCARD_MIN = 0.8  # word-set Jaccard at or above this counts as a near duplicate
CONTAIN_MIN_WORDS = 6  # verbatim containment is only checked for texts this long
MIN_CHARS = 10  # benchmark strings shorter than this are ids, labels, numbers
BENCH_SUFFIXES = {".csv", ".json", ".jsonl", ".txt"}

csv.field_size_limit(2**31 - 1)


def normalise(text: str) -> str:
    """Lowercase, drop punctuation (apostrophes vanish, other marks become spaces), collapse spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"['\u2018\u2019`]", "", text)
    text = re.sub(r"[\W_]+", " ", text)
    return " ".join(text.split())


def shared_datasets_dir() -> Path:
    env = os.environ.get("MOGU_SHARED_DATASETS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


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
