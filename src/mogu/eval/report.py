"""The evaluation report: ``report.json`` (stable schema, see docs/evaluation.md), ``report.md`` and plots.

Refusal rates are over parseable verdicts; unparseable ones are counted per
suite and shown, never dropped. A defense's harmful (benign) refusal rate is
the mean of its per-suite rates over harmful (benign) suites. The repeated-sentence rate
(``mogu.judging.repetition``) is over every answer, per suite and pooled per defense.

MoGU at router shifts (defenses ``mogu@SHIFT``) is one curve of operating points: ``mogu_curve`` lists
them by shift, the Pareto plot draws them as one line, and each is a point of its own on the frontier.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mogu.eval.defenses.mogu import router_shift
from mogu.io.files import write_json_atomic
from mogu.io.provenance import provenance
from mogu.judging.repetition import MIN_WORDS, repetition_summary
from mogu.judging.stats import format_interval
from mogu.judging.verdict import Verdict, summarise

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Keys every report has, per defense and per suite (docs/evaluation.md); later versions only add keys.
REQUIRED_DEFENSE_KEYS = frozenset({"suites", "harmful_refusal_rate", "benign_refusal_rate", "unparseable", "seconds"})
REQUIRED_SUITE_KEYS = frozenset({"kind", "n", "refused", "complied", "unparseable", "refusal_rate"})


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def suite_summary(kind: str, verdicts: Iterable[Verdict]) -> dict[str, Any]:
    """``{"kind", "n", "refused", "complied", "unparseable", "refusal_rate"}`` for one suite."""
    return {"kind": kind, **summarise(verdicts)}


def _repetition(texts: Mapping[str, list[str]] | None, suite: str | None = None) -> dict[str, Any]:
    """The repeated-sentence counts of one suite's answers (``answers`` left out: it is the suite's ``n``), or of
    all of a defense's answers (``suite`` None); nothing without answers."""
    if texts is None:
        return {}
    summary = repetition_summary(texts.get(suite, []) if suite else [t for ts in texts.values() for t in ts])
    return {k: v for k, v in summary.items() if suite is None or k != "answers"}


def _points(defenses: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """(benign, harmful) refusal rate per defense that has both."""
    return {name: (d["benign_refusal_rate"], d["harmful_refusal_rate"]) for name, d in defenses.items()
            if d["benign_refusal_rate"] is not None and d["harmful_refusal_rate"] is not None}


def _shift(name: str) -> float | None:
    """The router shift of a MoGU operating point (``mogu``: 0), None for other defenses."""
    return 0.0 if name == "mogu" else router_shift(name)


def _shift_label(shift: float) -> str:
    return f"{shift:+g}" if shift else "0"


def mogu_curve(defenses: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]] | None:
    """MoGU's operating points by router shift, for the suite pair the Pareto plot uses (``mean``: the mean over
    harmful suites vs the mean over benign suites); None without a MoGU point."""
    points = sorted((_shift(name), name, point) for name, point in _points(defenses).items()
                    if _shift(name) is not None)
    if not points:
        return None
    return {"mean": [{"shift": shift, "defense": name, "harmful_refusal_rate": y, "benign_refusal_rate": x}
                     for shift, name, (x, y) in points]}


def build_report(
    verdicts: Mapping[str, Mapping[str, list[Verdict]]],
    kinds: Mapping[str, str],
    seconds: Mapping[str, float],
    config: dict[str, Any],
    extra: Mapping[str, Mapping[str, Any]] | None = None,
    gates: dict[str, Any] | None = None,
    responses: Mapping[str, Mapping[str, list[str]]] | None = None,
) -> dict[str, Any]:
    """The report dict: ``verdicts[defense][suite]``, ``kinds[suite]``, ``seconds[defense]``;
    ``extra[defense]`` is merged into each defense's entry (params, info); ``responses[defense][suite]`` (the
    answers, in any order) give the repeated-sentence rates."""
    defenses: dict[str, Any] = {}
    for name, by_suite in verdicts.items():
        texts = None if responses is None else responses.get(name, {})
        suites = {suite: {**suite_summary(kinds[suite], by_suite[suite]), **_repetition(texts, suite)}
                  for suite in kinds if suite in by_suite}
        defenses[name] = {
            "suites": suites,
            "harmful_refusal_rate": _mean(s["refusal_rate"] for s in suites.values() if s["kind"] == "harmful"),
            "benign_refusal_rate": _mean(s["refusal_rate"] for s in suites.values() if s["kind"] == "benign"),
            "unparseable": sum(s["unparseable"] for s in suites.values()),
            "seconds": round(float(seconds.get(name, 0.0)), 3),
            **_repetition(texts),
            **dict((extra or {}).get(name, {})),
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "defenses": defenses,
        "pareto_frontier": pareto_frontier(_points(defenses)),
        "pareto_by_suite_pair": pareto_by_suite_pair(defenses),
        "mogu_curve": mogu_curve(defenses),
        "gates": gates,
        "config": config,
        "provenance": provenance(),
    }


def pareto_frontier(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the points no other point dominates, by increasing x.

    x is the benign refusal rate (lower is better), y the harmful refusal rate
    (higher is better); p dominates q if it is no worse in both and better in one.
    Equal points are all kept.
    """

    def dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
        return p[0] <= q[0] and p[1] >= q[1] and p != q

    front = [n for n, q in points.items() if not any(dominates(p, q) for p in points.values())]
    return sorted(front, key=lambda n: (points[n][0], -points[n][1], n))


def _suite_kinds(defenses: Mapping[str, Any]) -> dict[str, str]:
    """Every suite any defense answered, in first-seen order, with its kind (harmful or benign)."""
    kinds: dict[str, str] = {}
    for entry in defenses.values():
        for suite, summary in entry["suites"].items():
            kinds.setdefault(suite, summary["kind"])
    return kinds


def pareto_by_suite_pair(defenses: Mapping[str, Any]) -> dict[str, list[str]]:
    """``pareto_frontier`` for every harmful x benign suite pair (key "harmful suite x benign suite"), on the
    defenses that answered both suites."""
    kinds = _suite_kinds(defenses)
    fronts = {}
    for harmful in (s for s, k in kinds.items() if k == "harmful"):
        for benign in (s for s, k in kinds.items() if k == "benign"):
            points = {name: (entry["suites"][benign]["refusal_rate"], entry["suites"][harmful]["refusal_rate"])
                      for name, entry in defenses.items() if {harmful, benign} <= set(entry["suites"])}
            fronts[f"{harmful} x {benign}"] = pareto_frontier(
                {name: p for name, p in points.items() if None not in p})
    return fronts


def _pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f}"


def format_markdown(report: dict[str, Any]) -> str:
    """A table: one row per defense, one column per suite (refusal %), then the per-kind means."""
    defenses = report["defenses"]
    suites = _suite_kinds(defenses)
    order = [s for s, k in suites.items() if k == "harmful"] + [s for s, k in suites.items() if k == "benign"]
    cfg = report.get("config", {})
    lines = [
        "# Evaluation report",
        "",
        f"Target `{cfg.get('target')}`, judge `{cfg.get('judge')}`, "
        f"max_new_tokens {cfg.get('decoding', {}).get('max_new_tokens')}. "
        "Cells: refusal rate in % over parseable verdicts, with its 95% Wilson interval. Harmful suites: "
        "higher is safer; benign suites: lower is better.",
        "",
        "| defense | " + " | ".join(f"{s} ({suites[s]}, n={_suite_n(defenses, s)})" for s in order)
        + " | harmful mean | benign mean | unparseable | seconds |",
        "|---" * (len(order) + 5) + "|",
    ]
    for name, entry in defenses.items():
        cells = []
        for suite in order:
            s = entry["suites"].get(suite)
            cells.append("" if s is None else _pct(s["refusal_rate"]) + format_interval(s.get("refusal_rate_ci95"))
                         + (f" ({s['unparseable']} unp.)" if s["unparseable"] else ""))
        lines.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {_pct(entry['harmful_refusal_rate'])} | {_pct(entry['benign_refusal_rate'])}"
            + f" | {entry['unparseable']} | {entry['seconds']:.1f} |"
        )
    lines += _repetition_table(defenses, order)
    if report.get("pareto_frontier"):
        lines += ["", "Pareto frontier (benign refusal down, harmful refusal up): " + ", ".join(report["pareto_frontier"])]
    pairs = report.get("pareto_by_suite_pair") or {}
    if len(pairs) > 1:
        lines += ["", "Pareto frontier per suite pair:", "", "| harmful x benign | frontier |", "|---|---|"]
        lines += [f"| {pair} | {', '.join(front)} |" for pair, front in pairs.items()]
    curve = (report.get("mogu_curve") or {}).get("mean", [])
    if len(curve) > 1:
        lines += ["", "MoGU by router shift (harmful mean / benign mean refusal %): " + ", ".join(
            f"{_shift_label(p['shift'])} {_pct(p['harmful_refusal_rate'])} / {_pct(p['benign_refusal_rate'])}" for p in curve)]
    gates = report.get("gates")
    if gates:
        lines += ["", f"Mean glad weight at the first routed token (layers {gates['layers'][0]}..{gates['layers'][-1]}): "
                  f"harmful {_fmt(_mean(gates['harmful']))}, benign {_fmt(_mean(gates['benign']))}"]
    return "\n".join(lines) + "\n"


def _repetition_table(defenses: Mapping[str, Any], order: list[str]) -> list[str]:
    """Repeated-sentence rate per defense and suite, and over all of a defense's answers; nothing for reports
    without it."""
    if not any("repeated" in entry for entry in defenses.values()):
        return []

    def cell(row: Mapping[str, Any] | None) -> str:
        if row is None or "repeated" not in row:
            return ""
        return _pct(row["repeated_sentence_rate"]) + format_interval(row["repeated_sentence_rate_ci95"]) + f" ({row['repeated']})"

    lines = ["", "Repeated-sentence rate: % of answers that say one sentence of at least "
             f"{MIN_WORDS} words twice, with its 95% Wilson interval and (count).", "",
             "| defense | " + " | ".join(order) + " | all answers |", "|---" * (len(order) + 2) + "|"]
    for name, entry in defenses.items():
        lines.append(f"| {name} | " + " | ".join(cell(entry["suites"].get(s)) for s in order) + f" | {cell(entry)} |")
    return lines


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _suite_n(defenses: Mapping[str, Any], suite: str) -> int:
    return max(entry["suites"][suite]["n"] for entry in defenses.values() if suite in entry["suites"])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(report: dict[str, Any], path: Path) -> bool:
    """Benign vs harmful refusal rate, one labelled point per defense, the frontier as a line; MoGU's points at
    several router shifts as one line, each point labelled with its shift."""
    points = _points(report["defenses"])
    if not points:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    front = report.get("pareto_frontier") or pareto_frontier(points)
    curve = (mogu_curve(report["defenses"]) or {}).get("mean", [])
    if len(curve) > 1:
        ax.plot([100 * p["benign_refusal_rate"] for p in curve], [100 * p["harmful_refusal_rate"] for p in curve],
                color="tab:purple", marker="o", label="MoGU by router shift", zorder=2.5)
        for p in curve:
            xy = (100 * p["benign_refusal_rate"], 100 * p["harmful_refusal_rate"])
            ax.annotate(_shift_label(p["shift"]), xy, textcoords="offset points", xytext=(5, -10), fontsize=7, color="tab:purple")
            if p["defense"] in front:  # an operating point on the frontier, marked as other defenses there are
                ax.scatter([xy[0]], [xy[1]], color="tab:red", zorder=3)
        points = {n: xy for n, xy in points.items() if n not in {p["defense"] for p in curve} - {"mogu"}}
    together: dict[tuple[float, float], list[str]] = {}
    for name, point in points.items():  # defenses on the same spot share one label
        together.setdefault(point, []).append(name)
    for (x, y), group in together.items():
        on_front = any(n in front for n in group)
        ax.scatter([100 * x], [100 * y], color="tab:red" if on_front else "tab:blue", zorder=3)
        ax.annotate("\n".join(group), (100 * x, 100 * y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    if front:
        every = _points(report["defenses"])
        ax.plot([100 * every[n][0] for n in front], [100 * every[n][1] for n in front], color="tab:red",
                linestyle="--", label="Pareto frontier", zorder=2)
    if front or len(curve) > 1:
        ax.legend(loc="lower right")
    ax.set_xlabel("benign refusal rate, % (lower is better)")
    ax.set_ylabel("harmful refusal rate, % (higher is safer)")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.set_title("Safety vs over-refusal")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_gates(gates: dict[str, Any], path: Path) -> None:
    """Mean glad weight per routed layer at the first routed token, harmful vs benign prompts."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, color in (("harmful", "tab:red"), ("benign", "tab:green")):
        if gates.get(kind):
            ax.plot(gates["layers"], gates[kind], marker="o", color=color, label=f"{kind} (n={gates['n'][kind]})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("mean glad weight (first routed token)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Router: glad weight, harmful vs benign prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """``report.json``, ``report.md``, ``pareto.png`` and (with gates) ``gates.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "report.json", report)
    tmp = out_dir / ".report.md.tmp"
    tmp.write_text(format_markdown(report), encoding="utf-8")
    tmp.replace(out_dir / "report.md")
    if not plot_pareto(report, out_dir / "pareto.png"):
        log.info("no pareto plot: it needs both harmful and benign suites")
    if report.get("gates"):
        plot_gates(report["gates"], out_dir / "gates.png")
