"""The repeated-sentence rate: the share of answers in which one sentence occurs at least twice, a sign of
degenerate text (a routed opening that loops, "I can't help with that. I can't help with that.").

Sentences are split as the keyword judge splits them (``mogu.judging.keyword.sentences``) and compared
normalised: lower-case, runs of whitespace folded to one space, list markers ("-", "*", "1.", "2)") and
trailing punctuation stripped. Only sentences of at least ``MIN_WORDS`` words count, so that short
sentences an ordinary answer may well say twice ("Yes.", "Thank you.", "Step 1.") do not; an answer cut
mid-sentence ends in a fragment, which equals no whole sentence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from mogu.judging.keyword import sentences
from mogu.judging.stats import wilson_interval

#: The fewest words (runs of letters or digits, apostrophes inside kept: "i'm" is one) a sentence needs to count.
MIN_WORDS = 3

_WORD = re.compile(r"\w+(?:'\w+)*")
_LIST_MARKER = re.compile(r"^(?:[-*\u2022]+|\d+[.)])\s+")
_TRAILING = re.compile(r"[\s.!?,;:\u2026\"')\]]+$")


def normalised(sentence: str) -> str:
    """``sentence`` lower-cased, whitespace folded, without a leading list marker or trailing punctuation."""
    text = " ".join(sentence.lower().split())
    return _TRAILING.sub("", _LIST_MARKER.sub("", text))


def repeated_sentence(response: str) -> str | None:
    """The first sentence (normalised) of at least ``MIN_WORDS`` words that ``response`` says again; None if
    it repeats none."""
    seen: set[str] = set()
    for sentence in sentences(response):
        key = normalised(sentence)
        if len(_WORD.findall(key)) < MIN_WORDS:
            continue
        if key in seen:
            return key
        seen.add(key)
    return None


def repetition_summary(responses: Iterable[str]) -> dict[str, Any]:
    """``{"answers", "repeated", "repeated_sentence_rate", "repeated_sentence_rate_ci95"}`` over ``responses``.

    Every answer counts, an empty one too (it repeats nothing); the rate is None, and its interval too, for no
    answers."""
    flags = [repeated_sentence(r) is not None for r in responses]
    n, repeated = len(flags), sum(flags)
    interval = wilson_interval(repeated, n)
    return {"answers": n, "repeated": repeated, "repeated_sentence_rate": repeated / n if n else None,
            "repeated_sentence_rate_ci95": list(interval) if interval else None}
