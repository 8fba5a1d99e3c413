"""Mean, minimum and maximum over runs that differ only in their seed. Prints JSON; ``--markdown`` a table.

Each RUN is either a ``mogu eval`` output folder (its ``report.json``: refusal and repeated-sentence rate of
every defense on every suite) or a bundle folder (its ``evaluation.json``: refusal rate of the base model and
MoGU on every split and label, as ``mogu train`` printed it). All runs must be of one kind and hold the same
defenses and suites (or splits): a figure that one run lacks is an error, not a smaller mean.

    python benchmarks/seed_spread.py eval-seed0 eval-seed1 eval-seed2 --markdown
    python benchmarks/seed_spread.py runs/seed0 runs/seed1 runs/seed2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

Figures = dict[str, dict[str, float]]  # row (defense or split/label) -> column (suite or model) -> rate


def eval_figures(report: dict) -> Figures:
    """Refusal rates per defense and suite of a report, the report's means over the harmful and over the benign
    suites (``harmful mean``, ``benign mean``), and the repeated-sentence rates (``SUITE repeated``)."""
    rows: Figures = {}
    for defense, result in report["defenses"].items():
        row = rows.setdefault(defense, {})
        for suite, figures in result["suites"].items():
            row[suite] = figures["refusal_rate"]
            row[f"{suite} repeated"] = figures["repeated_sentence_rate"]
        row["harmful mean"] = result["harmful_refusal_rate"]
        row["benign mean"] = result["benign_refusal_rate"]
    return rows


def bundle_figures(evaluation: dict) -> Figures:
    """Refusal rates of the base model and MoGU per split and label of a bundle's evaluation."""
    return {
        f"{split} {label}": {"base": rates["base"], "mogu": rates["mogu"]}
        for split, result in evaluation["splits"].items()
        for label, rates in result["refusal_rate"].items()
    }


def read_run(folder: Path) -> tuple[str, Figures]:
    """(kind, figures) of a ``mogu eval`` output folder or a bundle folder."""
    if (folder / "report.json").is_file():
        return "eval", eval_figures(json.loads((folder / "report.json").read_text()))
    if (folder / "evaluation.json").is_file():
        return "bundle", bundle_figures(json.loads((folder / "evaluation.json").read_text()))
    raise SystemExit(f"{folder}: neither a mogu eval output (report.json) nor a bundle (evaluation.json)")


def spread(runs: dict[str, Figures]) -> dict[str, dict[str, dict[str, float | list[float]]]]:
    """Per row and column: the runs' values, their mean, min and max (in %, one decimal)."""
    names = list(runs)
    first = runs[names[0]]
    cells = {(row, column) for row, columns in first.items() for column in columns}
    for name in names[1:]:
        other = {(row, column) for row, columns in runs[name].items() for column in columns}
        if other != cells:
            differ = sorted(" / ".join(cell) for cell in cells ^ other)
            raise SystemExit(f"{name} and {names[0]} differ in these figures: {', '.join(differ[:5])}")
    result: dict[str, dict[str, dict[str, float | list[float]]]] = {}
    for row, columns in first.items():
        for column in columns:
            values = [100 * runs[name][row][column] for name in names]
            result.setdefault(row, {})[column] = {
                "values": [round(v, 1) for v in values],
                "mean": round(sum(values) / len(values), 1),
                "min": round(min(values), 1),
                "max": round(max(values), 1),
            }
    return result


def markdown(table: dict[str, dict[str, dict[str, float | list[float]]]]) -> str:
    """The refusal rates as 'mean [min-max]' cells, one row per defense or split/label."""
    columns = [c for c in next(iter(table.values())) if not c.endswith(" repeated")]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row, cells in table.items():
        lines.append(f"| {row} | " + " | ".join(
            f"{cells[c]['mean']:.1f} [{cells[c]['min']:.1f}-{cells[c]['max']:.1f}]" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="mogu eval output folders, or bundle folders")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table of refusal rates instead")
    args = parser.parse_args()
    kinds, runs = set(), {}
    for folder in args.runs:
        kind, figures = read_run(folder)
        kinds.add(kind)
        runs[str(folder)] = figures
    if len(kinds) > 1:
        raise SystemExit("mix of mogu eval outputs and bundles: give runs of one kind")
    table = spread(runs)
    print(markdown(table) if args.markdown else json.dumps({"runs": list(runs), "rates_percent": table}, indent=2))


if __name__ == "__main__":
    main()
