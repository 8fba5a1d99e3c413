"""The report from hand-made verdicts and answers: repeated-sentence rates, MoGU's curve over router shifts, the
frontier with its shifted points, the Markdown table and the Pareto plot."""

from __future__ import annotations

import json

import matplotlib.axes
import pytest

from mogu.eval.report import build_report, format_markdown, mogu_curve, plot_pareto
from mogu.judging.stats import wilson_interval
from mogu.judging.verdict import verdict_for

KINDS = {"harm": "harmful", "ben": "benign"}
LOOP = "I can't help with that request. I can't help with that request."


def verdicts(refused: int, n: int = 10) -> list:
    return [verdict_for("refusal" if i < refused else "compliance", "", "k") for i in range(n)]


@pytest.fixture
def report() -> dict:
    """(benign, harmful) refusals out of 10: none (0, 1), sft (3, 7), mogu (2, 8); mogu at -1 refuses more of
    both, at +1 fewer of both (and so beats sft), at +2 as many harmful as at +1 and more benign (beaten)."""
    rates = {"none": (0, 1), "sft": (3, 7), "mogu@-1": (4, 10), "mogu": (2, 8), "mogu@+1": (1, 7), "mogu@+2": (2, 7)}
    made = {name: {"harm": verdicts(h), "ben": verdicts(b)} for name, (b, h) in rates.items()}
    answers = {name: {"harm": [LOOP] * 3 + ["Sure."] * 7, "ben": ["Bread needs flour."] * 10} for name in rates}
    answers["none"]["ben"][0] = "Mix it well, then wait. Mix it well, then wait."
    return build_report(made, KINDS, {}, {"judge": "k"}, responses=answers)


def test_repeated_sentence_rate_per_suite_and_defense(report):
    harm = report["defenses"]["none"]["suites"]["harm"]
    assert (harm["n"], harm["repeated"], harm["repeated_sentence_rate"]) == (10, 3, 0.3)
    assert harm["repeated_sentence_rate_ci95"] == list(wilson_interval(3, 10))
    entry = report["defenses"]["none"]
    assert (entry["answers"], entry["repeated"], entry["repeated_sentence_rate"]) == (20, 4, 0.2)
    assert entry["repeated_sentence_rate_ci95"] == list(wilson_interval(4, 20))
    assert report["defenses"]["sft"]["suites"]["ben"]["repeated"] == 0
    table = format_markdown(report)
    assert "Repeated-sentence rate" in table
    assert "| none | 30.0 [11-60] (3) | 10.0 [2-40] (1) | 20.0 [8-42] (4) |" in table
    old = build_report({"none": {"harm": verdicts(1)}}, KINDS, {}, {})  # no answers given: no such keys
    assert "repeated" not in old["defenses"]["none"]["suites"]["harm"]
    assert "Repeated-sentence" not in format_markdown(old)


def test_mogu_curve_by_shift_and_shifted_points_on_the_frontier(report):
    curve = report["mogu_curve"]["mean"]
    assert [(p["shift"], p["defense"]) for p in curve] == [
        (-1.0, "mogu@-1"), (0.0, "mogu"), (1.0, "mogu@+1"), (2.0, "mogu@+2")]
    assert (curve[0]["harmful_refusal_rate"], curve[0]["benign_refusal_rate"]) == (1.0, 0.4)
    assert json.loads(json.dumps(report))["mogu_curve"] == report["mogu_curve"]
    # mogu@+1 (0.1, 0.7) beats sft (0.3, 0.7); mogu@+2 is beaten by mogu@+1; none is the lowest over-refusal
    assert report["pareto_frontier"] == ["none", "mogu@+1", "mogu", "mogu@-1"]
    assert "MoGU by router shift (harmful mean / benign mean refusal %): -1 100.0 / 40.0, 0 80.0 / 20.0" in format_markdown(report)
    assert mogu_curve({"none": report["defenses"]["none"]}) is None


def test_pareto_plot_draws_mogu_as_one_curve_labelled_with_shifts(report, tmp_path, monkeypatch):
    lines, labels = [], []
    plot, annotate = matplotlib.axes.Axes.plot, matplotlib.axes.Axes.annotate
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, xs, ys, *a, **k: lines.append((list(xs), list(ys), k.get("label"))) or plot(ax, xs, ys, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda ax, text, *a, **k: labels.append(text) or annotate(ax, text, *a, **k))
    assert plot_pareto(report, tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 0
    curve = [line for line in lines if line[2] == "MoGU by router shift"]
    assert curve == [([40.0, 20.0, 10.0, 20.0], [100.0, 80.0, 70.0, 70.0], "MoGU by router shift")]
    assert {"-1", "0", "+1", "+2"} <= set(labels)
    assert "mogu@+1" not in labels and "mogu" in labels and "sft" in labels  # shifted points go by their shift


def test_pareto_frontier_per_suite_pair():
    # two harmful suites, one benign: sft beats mogu on "jail" but not on "harm"
    kinds = {"harm": "harmful", "jail": "harmful", "ben": "benign"}
    rates = {"none": (0, 1, 0), "sft": (3, 6, 9), "mogu": (3, 8, 5)}  # benign, harm, jail refusals out of 10
    made = {name: {"ben": verdicts(b), "harm": verdicts(h), "jail": verdicts(j)} for name, (b, h, j) in rates.items()}
    made["solo"] = {"harm": verdicts(10)}  # answered one suite only: on no pair
    report = build_report(made, kinds, {}, {})
    assert report["pareto_by_suite_pair"] == {"harm x ben": ["none", "mogu"], "jail x ben": ["none", "sft"]}
    assert "| jail x ben | none, sft |" in format_markdown(report)
