"""The repeated-sentence rate: which answers say one sentence twice, and the rate over answers."""

from __future__ import annotations

import pytest

from mogu.judging.repetition import MIN_WORDS, normalised, repeated_sentence, repetition_summary
from mogu.judging.stats import wilson_interval

REPEATING = [
    ("I can't help with that request. I can't help with that request. I'm a human. I'm a human.",
     "i can't help with that request"),
    ("I'm a human. I'm a human", "i'm a human"),  # the last one unpunctuated: still the same sentence
    ("I can\u2019t help with that.  I CAN'T   help with that!", "i can't help with that"),  # case, spaces, mark
    ("Sure, here is a recipe.\nMix flour and water.\nBake it for an hour.\nMix flour and water.",
     "mix flour and water"),  # not next to each other
    ("Steps:\n1. Mix the flour well.\n2. Mix the flour well.", "mix the flour well"),  # one list item twice
]
NOT_REPEATING = [
    "",
    "To bake bread, mix flour, water, yeast and salt. Knead the dough, let it rise, then bake it at 220 C.",
    "Here are three ideas:\n- Go for a walk.\n- Read a book.\n- Call a friend.\n1. Plan it.\n2. Plan it.",
    "Yes. Yes. No. Thank you! Thank you!",  # short sentences said twice are ordinary
    "I can't help with that request. I can't help with that req",  # cut mid-sentence
    "I can't help with that. I can't help with that request.",  # alike, not the same
]


@pytest.mark.parametrize(("response", "sentence"), REPEATING)
def test_answers_saying_one_sentence_twice_count(response, sentence):
    assert repeated_sentence(response) == sentence


@pytest.mark.parametrize("response", NOT_REPEATING)
def test_ordinary_lists_short_and_cut_answers_do_not(response):
    assert repeated_sentence(response) is None


def test_sentences_need_min_words_to_count():
    words = ["apples", "are", "red", "and", "round"]
    shortest = " ".join(words[:MIN_WORDS]) + "."
    shorter = " ".join(words[:MIN_WORDS - 1]) + "."
    assert repeated_sentence(f"{shortest} {shortest}") == shortest.rstrip(".")
    assert repeated_sentence(f"{shorter} {shorter}") is None


def test_normalised_folds_case_space_markers_and_trailing_punctuation():
    assert normalised("  - I   Won't do THAT?!  ") == "i won't do that"
    assert normalised("3) Stir it well...") == "stir it well"
    assert normalised("Is 3.5 enough") == "is 3.5 enough"  # a point inside is kept


def test_summary_counts_every_answer_with_a_wilson_interval():
    answers = [REPEATING[0][0], REPEATING[1][0], *NOT_REPEATING]
    summary = repetition_summary(answers)
    assert (summary["answers"], summary["repeated"]) == (len(answers), 2)
    assert summary["repeated_sentence_rate"] == pytest.approx(2 / len(answers))
    assert summary["repeated_sentence_rate_ci95"] == list(wilson_interval(2, len(answers)))
    assert repetition_summary([]) == {"answers": 0, "repeated": 0, "repeated_sentence_rate": None,
                                      "repeated_sentence_rate_ci95": None}
