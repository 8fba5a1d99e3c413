"""JSON Lines input and output shared by data building, generation and evaluation.

Reading reports bad input as ``file:line: message`` naming the field; writing
appends one flushed line per record so that an interrupted run keeps every
finished record and can resume by skipping the ids already written.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


class JsonlError(ValueError):
    """A malformed JSON Lines file; the message names file, line and field."""


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a ``.gz`` file is read through gzip."""
    path = Path(path)
    if not path.is_file():
        raise JsonlError(f"{path}: file not found")
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise JsonlError(f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})") from err
            if not isinstance(record, dict):
                raise JsonlError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield number, record


def field(record: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str, required: bool = True) -> Any:
    """``record[name]`` checked for presence and type; ``where`` is ``file:line``."""
    if name not in record or record[name] is None:
        if required:
            raise JsonlError(f"{where}: missing field {name!r}")
        return None
    value = record[name]
    if not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise JsonlError(f"{where}: field {name!r} must be {expected}, got {type(value).__name__}")
    return value


def done_ids(path: str | Path, key: str = "id") -> set[str]:
    """Ids already present in an output file (a torn last line from a crash is ignored and rewritten)."""
    path = Path(path)
    if not path.is_file():
        return set()
    ids = set()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    good = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if line is lines[-1]:
                break
            raise JsonlError(f"{path}: corrupt line inside the file; cannot resume safely") from None
        good.append(line if line.endswith("\n") else line + "\n")
        ids.add(str(record[key]))
    if len(good) != len(lines):
        path.write_text("".join(good), encoding="utf-8")
    return ids


def append_jsonl(handle: IO[str], record: dict[str, Any]) -> None:
    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    handle.flush()
