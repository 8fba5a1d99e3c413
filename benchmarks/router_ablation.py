"""Router ablation: retrain only the routers of an existing bundle under another router config.

The data and both experts are taken from BUNDLE, so only the router stage runs
(``mogu train`` resumes at it): what a router setting changes is measured
without retraining the experts. Prints the router stage's validation history
(validation split only: this is what settings are chosen on) and the final
seed test-split evaluation as JSON.

    python benchmarks/router_ablation.py runs/bench-bundle /tmp/ablation \\
        '{"router": {"shape": "paper", "reads": "own"}, "router_stage": {"probe_init": false, "gate_loss": "mse", "lr": 1e-3}}'
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

from mogu.config import write_json_atomic
from mogu.train.config import TrainConfig
from mogu.train.pipeline import LAYERS_FILE, bundle_train_config, prepare_output, train


def seeded_work_folder(bundle: Path, out: Path, config: TrainConfig) -> None:
    """Lay out ``OUT.work`` as ``mogu train`` leaves it after the two expert stages.

    A work folder left by an interrupted run of the same ablation is kept, so that
    the router stage resumes from its checkpoint.
    """
    shutil.rmtree(out, ignore_errors=True)
    work, _ = prepare_output(config, out, overwrite=True)  # replaces a work folder with another config
    for name in ("data.jsonl", LAYERS_FILE):  # the bundle's own data and layer choice
        if (bundle / name).is_file() and not (work / name).is_file():
            shutil.copy(bundle / name, work / name)
    selection = json.loads((bundle / "selection.json").read_text(encoding="utf-8"))
    for name in ("glad", "unwill"):
        if not (work / name / "selection.json").is_file():
            shutil.rmtree(work / name, ignore_errors=True)
            shutil.copytree(bundle / name, work / name / "adapter")
            write_json_atomic(work / name / "selection.json", selection[name])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path, help="a bundle written by mogu train (its data and experts are reused)")
    parser.add_argument("out", type=Path, help="where the ablation bundle goes (replaced)")
    parser.add_argument("overrides", help="JSON merged into the bundle's own training config, e.g. '{\"router_stage\": {...}}'")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = bundle_train_config(args.bundle, json.loads(args.overrides))
    seeded_work_folder(args.bundle, args.out, config)
    start = time.perf_counter()
    train(config, args.out)
    print(json.dumps({"overrides": json.loads(args.overrides), **summary(args.out),
                      "seconds": round(time.perf_counter() - start, 1)}, indent=1))


def summary(bundle: Path) -> dict:
    """The router stage's validations (from the bundle's train log), its selected step and the test evaluation."""
    events = [json.loads(line) for line in (bundle / "train_log.jsonl").read_text(encoding="utf-8").splitlines()]
    # "router", or "router.K" for member K when router_stage.members > 1 (their average is "router")
    validations = [{"stage": e["stage"], "step": e["step"], **e["validation"]} for e in events
                   if e.get("stage", "").split(".")[0] == "router" and "validation" in e]
    selection = json.loads((bundle / "selection.json").read_text(encoding="utf-8"))["router"]
    evaluation = json.loads((bundle / "evaluation.json").read_text(encoding="utf-8"))
    return {"router_validations": validations, "selected_step": selection["selected_step"],
            "test_refusal_rate": evaluation["refusal_rate"]}


if __name__ == "__main__":
    main()
