"""Prompt suites: harmful or benign prompts read from CSV, JSON or JSONL files.

A suite file holds one prompt per row. The text column is found automatically
(first of ``TEXT_COLUMNS`` present, exact name) or named with ``column=``; the
prompt id is the row's ``id`` (or ``BehaviorID``) field, else its row number
as below, so ids do not change with ``where`` or ``limit``. Every other named
field goes into ``Prompt.meta``.

Rows are numbered from 1 in error messages: data rows for CSV (the header is
not counted), lines for JSONL (``file.jsonl:7:``) and list items for JSON. A
row is never dropped silently: a missing or empty text is an error unless the
row is excluded by ``where``.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from mogu.io.jsonl import JsonlError, read_jsonl

log = logging.getLogger(__name__)

Kind = Literal["harmful", "benign"]
KINDS: tuple[str, ...] = ("harmful", "benign")

# Text column priority. Exact names: JailbreakBench has both ``Goal`` (the
# request) and ``Behavior`` (a short label), so ``Goal`` must come first.
TEXT_COLUMNS: tuple[str, ...] = (
    "prompt",
    "instruction",
    "goal",
    "Goal",
    "Behavior",
    "behavior",
    "forbidden_prompt",
    "question",
    "query",
    "text",
    "input",
)
ID_COLUMNS: tuple[str, ...] = ("id", "BehaviorID")
SEED_LABELS: dict[str, Kind] = {"harmful": "harmful", "benign": "benign", "borderline": "benign"}
SPEC_KEYS: tuple[str, ...] = ("name", "column", "where", "limit")


class SuiteError(ValueError):
    """A suite file or spec is malformed; the message names the file, row and field."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    suite: str
    kind: Kind
    meta: dict[str, Any] = field(default_factory=dict)


def prompt_key(prompt: Prompt) -> str:
    """The cache key of a prompt: ids are unique within a suite only."""
    return f"{prompt.suite}::{prompt.id}"


@dataclass
class Suite:
    name: str
    kind: Kind
    prompts: list[Prompt]
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)


@dataclass(frozen=True)
class _Row:
    number: int  # 1-based row, line or item number in the file
    where: str  # location prefix for messages, e.g. "data.csv: row 3" or "data.jsonl:7"
    fields: dict[str, Any]


@dataclass(frozen=True)
class SuiteSpec:
    """A parsed CLI suite spec; ``load`` reads the file."""

    path: Path
    kind: Kind
    name: str | None = None
    column: str | None = None
    where: dict[str, str] | None = None
    limit: int | None = None

    def load(self, seed: int = 0) -> Suite:
        return load_suite(self.path, self.kind, self.name, self.column, self.where, self.limit, seed)


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise SuiteError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return kind  # type: ignore[return-value]


def _read_csv(path: Path) -> list[_Row]:
    """Rows of a CSV file with a header; a short row has None in its missing fields."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = []
        for n, record in enumerate(reader, start=1):
            where = f"{path}: row {n}"
            if None in record:
                raise SuiteError(f"{where}: more fields than the {len(reader.fieldnames or [])} columns of the header")
            rows.append(_Row(n, where, record))
    return rows


def _read_jsonl(path: Path) -> list[_Row]:
    try:
        return [_Row(n, f"{path}:{n}", record) for n, record in read_jsonl(path)]
    except JsonlError as err:
        raise SuiteError(str(err)) from err


def _read_json(path: Path) -> list[_Row]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SuiteError(f"{path}: invalid JSON: {err}") from err
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise SuiteError(
                f"{path}: a JSON object must hold exactly one list of rows; it holds {len(lists)}: {lists}"
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise SuiteError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    rows = []
    for n, record in enumerate(data, start=1):
        where = f"{path}: item {n}"
        if not isinstance(record, dict):
            raise SuiteError(f"{where}: expected a JSON object, got {type(record).__name__}")
        rows.append(_Row(n, where, record))
    return rows


_READERS = {".csv": _read_csv, ".json": _read_json, ".jsonl": _read_jsonl, ".ndjson": _read_jsonl}


def _read_rows(path: Path) -> tuple[list[str], list[_Row]]:
    """Columns (in order of first appearance) and rows of a suite file."""
    if not path.is_file():
        raise SuiteError(f"{path}: no such file")
    suffixes = [x.lower() for x in path.suffixes]
    # a gzipped file is read as what it holds (JSON Lines are read through gzip)
    reader = _READERS.get(suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" and suffixes[-2] in (".jsonl", ".ndjson")
                          else path.suffix.lower())
    if reader is None:
        raise SuiteError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(_READERS)}")
    rows = reader(path)
    if not rows:
        raise SuiteError(f"{path}: no rows")
    return list(dict.fromkeys(key for row in rows for key in row.fields)), rows


def _as_str(value: Any) -> str:
    """A field as the string ``where`` compares against (JSON values in JSON spelling)."""
    return value if isinstance(value, str) else json.dumps(value)


def _filter(path: Path, columns: list[str], rows: list[_Row], where: dict[str, str]) -> list[_Row]:
    for key in where:
        if key not in columns:
            raise SuiteError(f"{path}: where column {key!r} not found; columns are {columns}")
    kept = []
    for row in rows:
        for key in where:
            if key not in row.fields:
                raise SuiteError(f"{row.where}: where column {key!r} is missing")
        if all(_as_str(row.fields[key]) == value for key, value in where.items()):
            kept.append(row)
    if not kept:
        seen = {key: sorted({_as_str(row.fields[key]) for row in rows}) for key in where}
        raise SuiteError(f"{path}: no row matches where {where}; values present are {seen}")
    return kept


def _text_column(path: Path, columns: list[str], column: str | None) -> str:
    if column is not None:
        if column not in columns:
            raise SuiteError(f"{path}: column {column!r} not found; columns are {columns}")
        return column
    for candidate in TEXT_COLUMNS:
        if candidate in columns:
            return candidate
    raise SuiteError(f"{path}: no text column among {list(TEXT_COLUMNS)}; columns are {columns}; pass column=")


def _sample(n: int, limit: int | None, seed: int) -> list[int]:
    """Indices of a seeded random sample of ``limit`` of ``n`` rows, in file order."""
    if limit is not None and limit < 1:
        raise SuiteError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def load_suite(
    path: str | Path,
    kind: str,
    name: str | None = None,
    column: str | None = None,
    where: dict[str, str] | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> Suite:
    """Read a suite; ``where`` keeps rows whose fields equal the given strings, ``limit`` samples.

    The default name is the file stem, followed by the filter (``xstest_prompts[label=safe]``).
    """
    path = Path(path)
    kind = _check_kind(kind)
    columns, rows = _read_rows(path)
    if where:
        rows = _filter(path, columns, rows, where)
    text_column = _text_column(path, columns, column)
    id_column = next((c for c in ID_COLUMNS if c in columns and c != text_column), None)
    if name is None:
        name = path.stem + (f"[{','.join(f'{k}={v}' for k, v in where.items())}]" if where else "")

    prompts: list[Prompt] = []
    first_row: dict[str, str] = {}
    for row in rows:
        text = row.fields.get(text_column)
        if text is None:
            raise SuiteError(f"{row.where}: column {text_column!r} is missing")
        if not isinstance(text, str):
            raise SuiteError(f"{row.where}: column {text_column!r} is not a string: {text!r}")
        if not text.strip():
            raise SuiteError(f"{row.where}: column {text_column!r} is empty")
        has_id = id_column is not None and row.fields.get(id_column) is not None
        prompt_id = _as_str(row.fields[id_column]) if has_id else str(row.number)
        if prompt_id in first_row:
            raise SuiteError(f"{row.where}: duplicate id {prompt_id!r} (first at {first_row[prompt_id]})")
        first_row[prompt_id] = row.where
        # Unnamed columns (a pandas index saved with the CSV) carry nothing.
        meta = {k: v for k, v in row.fields.items() if k not in (text_column, id_column) and k}
        prompts.append(Prompt(prompt_id, text, name, kind, meta))

    prompts = [prompts[i] for i in _sample(len(prompts), limit, seed)]
    log.info("suite %s: %d %s prompts from %s (column %r)", name, len(prompts), kind, path, text_column)
    return Suite(name, kind, prompts, path)


def parse_suite_spec(spec: str, kind: str) -> SuiteSpec:
    """Parse ``PATH[:name=NAME][:column=COL][:where=KEY=VALUE]...[:limit=N]``.

    Only ``:name=``, ``:column=``, ``:where=`` and ``:limit=`` start an option,
    so a path may hold other colons. ``where`` may be repeated.
    """
    kind = _check_kind(kind)
    parts = re.split(rf":({'|'.join(SPEC_KEYS)})=", spec)
    path, pairs = parts[0], list(zip(parts[1::2], parts[2::2], strict=True))
    if not path:
        raise SuiteError(f"suite spec {spec!r}: no path")
    options: dict[str, str] = {}
    where: dict[str, str] = {}
    for key, value in pairs:
        if not value:
            raise SuiteError(f"suite spec {spec!r}: {key}= has no value")
        if key == "where":
            field_name, sep, field_value = value.partition("=")
            if not sep or not field_name:
                raise SuiteError(f"suite spec {spec!r}: where={value!r} is not KEY=VALUE")
            if field_name in where:
                raise SuiteError(f"suite spec {spec!r}: where on {field_name!r} given twice")
            where[field_name] = field_value
        elif key in options:
            raise SuiteError(f"suite spec {spec!r}: {key}= given twice")
        else:
            options[key] = value
    limit = options.get("limit")
    if limit is not None and not (limit.isdigit() and int(limit) >= 1):
        raise SuiteError(f"suite spec {spec!r}: limit={limit!r} is not a positive integer")
    return SuiteSpec(
        Path(path), kind, options.get("name"), options.get("column"), where or None, int(limit) if limit else None
    )


def seed_suites(split: str | None = "test", path: str | Path | None = None, limit: int | None = None,
                seed: int = 0) -> list[Suite]:
    """One suite per label of the package's instruction set (``instructions.jsonl.gz``) in ``split``:
    ``seed-harmful``, ``seed-benign`` and ``seed-borderline`` for the test split (the seed test split),
    ``{split}-{label}`` for the others (``val``, ``val_heldout``, ``val_style``).

    Borderline prompts look risky but are benign, so that suite has kind ``benign``. ``split=None`` takes every
    split; ``path`` replaces the packaged file; ``limit`` samples each suite (seeded).
    """
    source = Path(path) if path is not None else Path(str(files("mogu.data") / "instructions.jsonl.gz"))
    prefix = "seed" if split in (None, "test") else split
    suites = []
    for label, kind in SEED_LABELS.items():
        where = {"label": label} | ({"split": split} if split is not None else {})
        suites.append(load_suite(source, kind, f"{prefix}-{label}", column="instruction", where=where, limit=limit,
                                 seed=seed))
    return suites
