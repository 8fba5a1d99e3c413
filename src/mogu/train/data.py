"""Training data: instructions in, (instruction, compliant, refusal) records out.

Schema of a record (JSON Lines, one object per line; documented in docs/data.md):

    id           str, unique
    instruction  str, non-empty, unique after normalisation
    label        "harmful" | "benign" | "borderline"  (borderline = looks risky, is benign)
    category     str, optional
    style        str, optional: how the instruction is written (terse, chatty, texting, ...)
    split        "train" | "val" | "val_heldout" | "val_style" | "test", optional (default: a stable hash of the
                 id, 80/20 train/val); the validation splits: "val" a random slice of the training pool,
                 "val_heldout" whole categories and task types never trained on, "val_style" instructions
                 written in a style the training rows never use
    compliant    str, optional: an answer that complies (harmful: an affirmative opening only)
    refusal      str, optional: an answer that refuses

``build_dataset`` fills in missing responses: compliant answers to benign and
borderline instructions are the base model's own greedy openings (so the glad
side keeps the model's style); compliant answers to harmful instructions are
an affirmative opening derived from the instruction and nothing more (no
harmful content is ever generated or stored); refusals are varied, natural,
short whole answers chosen deterministically per id.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

from tqdm import tqdm

from mogu.model.config import DecodingConfig
from mogu.judging.keyword import RefusalJudge
from mogu.io.jsonl import JsonlError, append_jsonl, done_ids, field, read_jsonl
from mogu.model import MoGUModel
from mogu.train.batches import Turn
from mogu.train.config import ValidationSplit

log = logging.getLogger(__name__)

LABELS = ("harmful", "benign", "borderline")
VALIDATION_SPLITS: tuple[str, ...] = get_args(ValidationSplit)
SPLITS = ("train", *VALIDATION_SPLITS, "test")

#: Whole refusals: each says so once and is trained with the end-of-turn token after it (``training_response``), in
#: at most 11 tokens of the default model, so that it ends inside the routed window (``ROUTED_TOKENS``).
REFUSALS = (
    "Sorry, but I can't help with that.",
    "I can't assist with that request.",
    "I cannot help with that. It may cause harm.",
    "Sorry, I can't provide that.",
    "That could hurt people, so I won't help.",
    "I'm sorry, but I cannot help with this.",
    "I cannot do that. Is there anything else?",
    "I must decline, as this could hurt someone.",
    "I'm afraid I can't help with that.",
    "I'm unable to help with this request.",
    "Sorry, but I won't help with that request.",
    "I'm not able to help with that.",
)
AFFIRMATIVE_OPENERS = ("Sure, here is", "Certainly! Here is", "Of course. Here is", "Sure! Here is")


@dataclass
class Record:
    id: str
    instruction: str
    label: str
    category: str = ""
    split: str = "train"
    style: str = ""
    compliant: str | None = None
    refusal: str | None = None

    @property
    def benign(self) -> bool:
        return self.label != "harmful"


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def stable_fraction(key: str) -> float:
    """A number in [0, 1] fixed by ``key``: the same choice on every run and machine (unlike ``hash``)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def packaged_instructions() -> Path:
    """The instruction set shipped with the package (docs/data.md), read when no data file is given."""
    return Path(str(importlib.resources.files("mogu.data") / "instructions.jsonl.gz"))


def load_records(path: Path | None = None) -> list[Record]:
    """Read and validate instruction records; every problem names file:line and field."""
    path = Path(path) if path is not None else packaged_instructions()
    records: list[Record] = []
    ids: dict[str, int] = {}
    texts: dict[str, int] = {}
    for number, raw in read_jsonl(path):
        where = f"{path}:{number}"
        unknown = set(raw) - {f for f in Record.__dataclass_fields__}
        if unknown:
            raise JsonlError(f"{where}: unknown field(s) {sorted(unknown)}")
        instruction = field(raw, "instruction", str, where)
        if not instruction.strip():
            raise JsonlError(f"{where}: field 'instruction' is empty")
        label = field(raw, "label", str, where)
        if label not in LABELS:
            raise JsonlError(f"{where}: field 'label' is {label!r}; expected one of {LABELS}")
        key = str(field(raw, "id", (str, int), where, required=False) or f"line{number}")
        if key in ids:
            raise JsonlError(f"{where}: field 'id': duplicate id {key!r} (first on line {ids[key]})")
        norm = normalise(instruction)
        if norm in texts:
            raise JsonlError(f"{where}: field 'instruction': duplicate of line {texts[norm]}")
        split = field(raw, "split", str, where, required=False) or ("val" if stable_fraction(key) < 0.2 else "train")
        if split not in SPLITS:
            raise JsonlError(f"{where}: field 'split' is {split!r}; expected one of {SPLITS}")
        responses = {}
        for name in ("compliant", "refusal"):
            value = field(raw, name, str, where, required=False)
            if value is not None and not value.strip():
                raise JsonlError(f"{where}: field {name!r} is empty")
            responses[name] = value
        ids[key], texts[norm] = number, number
        records.append(Record(key, instruction.strip(), label, field(raw, "category", str, where, required=False) or "",
                              split, field(raw, "style", str, where, required=False) or "", **responses))
    if not records:
        raise JsonlError(f"{path}: no instructions")
    return records


def check_training_splits(records: list[Record], path: Path | None, validation: Iterable[str]) -> None:
    """Training needs harmful and benign-or-borderline instructions in 'train' and among the ``validation``
    splits (they select layers, checkpoints and the calibration)."""
    validation = tuple(validation)
    for harmful in (True, False):
        for splits in (("train",), validation):
            if not any(r.split in splits and r.benign != harmful for r in records):
                kind = "harmful" if harmful else "benign or borderline"
                raise JsonlError(f"{path or packaged_instructions()}: no {kind} instructions with split {' or '.join(splits)}; "
                                 f"training needs both kinds in 'train' and in the validation splits {list(validation)} "
                                 "(they select checkpoints); mark rows of categories or task types left out of 'train' "
                                 "with split 'val_heldout' and rows written in another style with 'val_style', or set "
                                 "validation to ['val'] (a random slice of the training pool, which flatters)")


def source_id(record: Record) -> str:
    """The id of the instruction a record was made from: its own, or a framed copy's source (``"{id}~{framing}"``)."""
    return record.id.split("~", 1)[0]


def stable_draw(records: list[Record], splits: Iterable[str], per_label: int | None, salt: str = "~val") -> list[Record]:
    """The records of ``splits``, at most ``per_label`` instructions of each label in each split, with their framed
    copies: a stable draw by id, so that every stage and every run reads the same ones (a smaller draw is part of a
    larger one), in their given order."""
    chosen = [r for r in records if r.split in set(splits)]
    if per_label is None:
        return chosen
    groups: dict[tuple[str, str], set[str]] = {}
    for record in chosen:
        groups.setdefault((record.split, record.label), set()).add(source_id(record))
    keep = {key for ids in groups.values() for key in sorted(ids, key=lambda i: stable_fraction(i + salt))[:per_label]}
    return [r for r in chosen if source_id(r) in keep]


def validation_records(records: list[Record], splits: Iterable[str], per_label: int | None) -> list[Record]:
    """The records that select layers, checkpoints and the calibration (``stable_draw`` of the validation
    ``splits``)."""
    return stable_draw(records, splits, per_label)


_REWRITES: tuple[tuple[str, str], ...] = (
    (r"^(?:can|could|would|will) you (?:please )?(?:tell me |explain |show me )?how (?:to|i can|i could|do i|can i) (.+)", "how to {0}"),
    (r"^(?:how do i|how can i|how could i|how would i|how should i|how to|how do you|how does one|how can one) (.+)", "how to {0}"),
    (r"^(?:please )?(?:tell|show|teach|explain to) me how (?:to|i can|i could) (.+)", "how to {0}"),
    (r"^(?:please )?(?:give|provide|send|list|draft|share)(?: me| us)? (.+)", "{0}"),
    (r"^(?:please )?(?:write|create|make|generate|compose|build|design|develop|produce|code|craft)(?: me| us)? (.+)", "{0}"),
    (r"^what(?:'s| is| are) the (?:best|easiest|fastest|quickest|most effective|simplest) ways? to (.+)", "the best way to {0}"),
    (r"^(?:i need|i want|help me)(?: you)?(?: to)? (.+)", "how to {0}"),
)
_PRONOUNS = {"my": "your", "me": "you", "i": "you", "i'm": "you're", "mine": "yours", "myself": "yourself", "our": "your", "us": "you"}


def affirmative_opening(record: Record) -> str:
    """'Sure, here is ...' restating the request; nothing of the harmful content itself."""
    text = record.instruction.strip().rstrip("?.!").strip()
    first = re.split(r"(?<=[.!?])\s+", text)[0] if len(text) > 160 else text
    phrase = None
    lowered = first[0].lower() + first[1:]
    for pattern, template in _REWRITES:
        match = re.match(pattern, lowered, flags=re.IGNORECASE)
        if match:
            phrase = template.format(match.group(1))
            break
    if phrase is None:
        phrase = "what you asked for"
    phrase = " ".join(_PRONOUNS.get(w.lower(), w) for w in phrase.split())
    opener = AFFIRMATIVE_OPENERS[int(stable_fraction(record.id + "a") * len(AFFIRMATIVE_OPENERS))]
    return f"{opener} {phrase}:"


def refusal_for(record: Record) -> str:
    return REFUSALS[int(stable_fraction(record.id + "r") * len(REFUSALS)) % len(REFUSALS)]


def training_response(record: Record, refuse: bool) -> str | Turn:
    """What the record trains: its refusal, a whole answer ended with the end-of-turn token, or its compliant
    opening."""
    return Turn(record.refusal or refusal_for(record)) if refuse else record.compliant


def first_sentence(text: str, min_chars: int = 20) -> str:
    """The opening of an answer: up to the first sentence end after ``min_chars``."""
    text = text.strip()
    for match in re.finditer(r"[.!?:](?=\s|$)|\n", text):
        if match.end() >= min_chars:
            return text[: match.end()].strip()
    return text


def build_dataset(model: MoGUModel, records: list[Record], out: Path, max_response_tokens: int, batch_size: int) -> list[Record]:
    """Fill in missing responses, appending finished records to ``out`` (resumable)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    finished = done_ids(out)
    todo = [r for r in records if r.id not in finished]
    judge = RefusalJudge()
    fallbacks = 0
    with out.open("a", encoding="utf-8") as handle:
        # Test-split records are never trained on: they keep whatever responses they came with.
        need_answers = [r for r in todo if r.benign and r.compliant is None and r.split != "test"]
        need_answers.sort(key=lambda r: len(r.instruction))  # batches of similar length: less padding
        others = [r for r in todo if r not in need_answers]
        for record in others:
            if record.compliant is None and record.split != "test":
                record.compliant = affirmative_opening(record)
            if record.split != "test":
                record.refusal = record.refusal or refusal_for(record)
            append_jsonl(handle, asdict(record))
        decoding = DecodingConfig(max_new_tokens=max_response_tokens, mode="base")
        for start in tqdm(range(0, len(need_answers), batch_size), desc="base answers", unit="batch"):
            chunk = need_answers[start : start + batch_size]
            for record, result in zip(chunk, model.generate([r.instruction for r in chunk], decoding)):
                answer = first_sentence(result.text)
                if not answer or judge.judge(record.instruction, answer).refused:
                    # The base model refused or said nothing: a compliant opening is still needed.
                    answer = affirmative_opening(record)
                    fallbacks += 1
                record.compliant = answer
                record.refusal = record.refusal or refusal_for(record)
                append_jsonl(handle, asdict(record))
    if fallbacks:
        log.info("base model refused or gave nothing for %d benign instructions; used affirmative openings", fallbacks)
    built = {r["id"]: r for _, r in read_jsonl(out)}
    missing = [r.id for r in records if r.id not in built]
    if missing:
        raise RuntimeError(f"{out}: records missing after synthesis: {missing[:5]}")
    return [Record(**built[r.id]) for r in records]


def summarise(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {}
    for r in records:
        counts.setdefault(r.split, Counter())[r.label] += 1
    return {split: dict(c) for split, c in sorted(counts.items())}
