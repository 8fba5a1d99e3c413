"""``evaluate``: suites x defenses -> cached generations -> verdicts -> report.

Layout of the output folder::

    generations/meta.json          target, decoding and each defense's settings
    generations/{defense}.jsonl    one answer per (suite, prompt id), appended as made
    generations/gates.json         router weights on a sample of prompts (bundles)
    verdicts/{defense}.jsonl       cached verdicts (per judge and response)
    defenses/{sft,detect-input}/   trained baseline pieces, made once
    samples.jsonl                  every judged answer with its verdict
    report.json, report.md         the results (schema in docs/evaluation.md)
    pareto.png, gates.png          the plots

Generation and judging are apart: a rerun generates only the prompts not
yet answered, and judges every saved answer (reusing cached verdicts of the
same judge on the same response); ``rejudge=True`` generates nothing and
judges everything again. Changing the decoding settings, the target or a
defense's settings with answers already saved is an error, not a silent mix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mogu.engine import EngineConfig
from mogu.engine.handover import EngineGenerator
from mogu.eval.attacks import apply_attacks, load_attack_prompts, parse_attack_spec
from mogu.eval.defenses import (
    ChatDefense,
    Defense,
    DefenseError,
    is_trained,
    make_defense,
    parse_defenses,
    with_mogu_shifts,
)
from mogu.eval.gates import gate_summary
from mogu.eval.report import build_report, write_report
from mogu.eval.specs import EvalError, parse_judge_spec
from mogu.eval.suites import Prompt, Suite, parse_suite_spec, prompt_key, seed_suites
from mogu.io.files import write_json_atomic
from mogu.io.jsonl import append_jsonl, done_ids, read_jsonl
from mogu.judging.repetition import repeated_sentence
from mogu.judging.verdict import Judge, Verdict, verdict_for
from mogu.model.bundle_files import is_bundle
from mogu.model.config import DecodingConfig, DtypeName
from mogu.model.loading import resolve_dtype

log = logging.getLogger(__name__)

def build_suites(
    harmful: Sequence[str] = (),
    benign: Sequence[str] = (),
    seed_split: str | None = None,
    attacks: Sequence[str] = (),
    attack_prompts: Sequence[str] = (),
    seed: int = 0,
    seed_limit: int | None = None,
) -> list[Suite]:
    """Suites from CLI-style specs.

    Each harmful suite (the seed split's too) is kept as it is and, for each
    ``attacks`` spec, added once more wrapped by that attack (suite
    ``{name}+{attack}``). ``attack_prompts`` are ``FILE[:method=M]``. ``seed_split`` names packaged splits,
    comma-separated, each sampled to ``seed_limit`` prompts per label.
    """
    suites = [parse_suite_spec(s, "harmful").load(seed) for s in harmful]
    suites += [parse_suite_spec(s, "benign").load(seed) for s in benign]
    for split in (seed_split or "").split(","):
        if split.strip():
            suites += seed_suites(split.strip(), limit=seed_limit, seed=seed)
    parsed = [parse_attack_spec(a) for a in attacks]
    suites += [apply_attacks(s, [a]) for s in list(suites) if s.kind == "harmful" for a in parsed]
    for spec in attack_prompts:
        path, sep, method = spec.partition(":method=")
        suites.append(load_attack_prompts(path, method or None, name=Path(path).stem + (f"[{method}]" if sep else "")))
    if not suites:
        raise EvalError("no suites: give --harmful / --benign files, --seed-split or --attack-prompts")
    names = [s.name for s in suites]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise EvalError(f"suite names must be distinct; {duplicates} appear twice (use :name= in the spec)")
    return suites


def _target_label(target: Any) -> str:
    if isinstance(target, (str, Path)):
        return os.path.abspath(target) if Path(target).exists() else str(target)
    return f"<MoGUModel on {target.config.base.source}>"


def _bundle_framing(bundle: Path) -> dict[str, float]:
    """The framed copies ``mogu train`` added to the bundle's data (none for a bundle trained before they
    existed, or one without a saved training config)."""
    path = bundle / "train_config.json"
    saved = json.loads(path.read_text(encoding="utf-8")).get("config", {}) if path.is_file() else {}
    return saved.get("framing", {"train_fraction": 0.0, "val_fraction": 0.0})


def _check_meta(path: Path, meta: dict[str, Any], names: Sequence[str], rejudge: bool) -> dict[str, Any]:
    """Merge this run's settings into ``generations/meta.json``, refusing changes under saved answers."""
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if rejudge:
        return saved
    has_answers = {n for n in names if (path.parent / f"{n}.jsonl").is_file()}
    if saved and has_answers:
        # answers saved before the dtype was recorded were made in float32
        for key, before in (("target", None), ("dtype", "float32"), ("decoding", None), ("engine", None)):
            if saved.get(key, before) != meta[key]:
                raise EvalError(
                    f"{path.parent} holds answers made with another {key} ({saved.get(key)!r}, now {meta[key]!r}); "
                    "use another --out folder or delete it"
                )
        for name in has_answers:
            old = saved.get("defenses", {}).get(name)
            if old is not None and old != meta["defenses"][name]:
                raise EvalError(
                    f"{path.parent / (name + '.jsonl')} was made with other {name} settings ({old}, now "
                    f"{meta['defenses'][name]}); use another --out folder or delete that file"
                )
    merged = {**saved, "target": meta["target"], "dtype": meta["dtype"], "decoding": meta["decoding"],
              "engine": meta["engine"],
              "defenses": {**saved.get("defenses", {}), **meta["defenses"]}}
    write_json_atomic(path, merged)
    return merged


def _engine_answers(defense: ChatDefense, engine: EngineGenerator, prompts: Sequence[Prompt],
                    decoding: DecodingConfig) -> list[str]:
    """A chat defense's answers with the base model's part on the engine; one that only changes the prompt
    (mode ``base``: no routed tokens) runs wholly there."""
    update = dict(defense.update)
    if update.get("mode") == "base":
        update["routed_tokens"] = 0
    return [r.text for r in engine([defense.chat(p) for p in prompts], decoding.model_copy(update=update))]


def _shared(decoding: DecodingConfig) -> dict[str, Any]:
    """The decoding settings all defenses share (each defense sets its own mode)."""
    return decoding.model_dump(mode="json", exclude={"mode", "fixed", "return_gates"})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _judge_records(judge: Judge, name: str, records: list[dict[str, Any]], cache: Path, rejudge: bool) -> list[Verdict]:
    """Verdicts for saved answers, reusing (and extending) the verdict cache of this judge."""
    if rejudge and cache.is_file():
        cache.unlink()
    known: dict[str, Verdict] = {}
    if cache.is_file():
        for _, r in read_jsonl(cache):
            if r.get("judge") == judge.name:
                known[f"{r['key']}#{r['response_sha']}"] = Verdict(r["refused"], r["label"], r["raw"], r["judge"], r.get("harmful"))
    verdicts = []
    cache.parent.mkdir(parents=True, exist_ok=True)
    with cache.open("a", encoding="utf-8") as handle:
        for record in tqdm(records, desc=f"judging {name}", unit="answer", disable=len(records) < 50):
            sha = _sha(record["response"])
            verdict = known.get(f"{record['key']}#{sha}")
            if verdict is None:
                try:
                    verdict = judge.judge(record["request"], record["response"])
                except Exception as err:  # noqa: BLE001 - a judge failure must not drop the answer
                    log.warning("judge %s failed on %s: %s; counted as unparseable", judge.name, record["key"], err)
                    verdict = verdict_for(None, f"judge error: {err}", judge.name)
                else:
                    append_jsonl(handle, {"key": record["key"], "judge": judge.name, "response_sha": sha,
                                          "refused": verdict.refused, "label": verdict.label, "raw": verdict.raw,
                                          "harmful": verdict.harmful})
            verdicts.append(verdict)
    return verdicts


def evaluate(
    target: Any,
    suites: Sequence[Suite],
    defenses: str | Sequence[str | Defense] = ("none", "mogu"),
    judge: Judge | str | None = None,
    decoding: DecodingConfig | None = None,
    out_dir: str | Path = "eval",
    *,
    batch_size: int = 8,
    defense_options: dict[str, dict[str, Any]] | None = None,
    rejudge: bool = False,
    gates_sample: int = 32,
    seed: int = 0,
    chat_template: str | None = None,
    dtype: DtypeName | None = None,
    mogu_shifts: Sequence[float] = (),
    engine: EngineConfig | None = None,
) -> dict[str, Any]:
    """Generate (cached) with every defense on every suite, judge the answers, write the report; return it.

    ``target``: a bundle folder or base model name/path (loaded only when
    something is to be generated), or a loaded ``MoGUModel``. ``defenses``:
    names (``none,mogu`` or a list) or ready ``Defense`` objects. ``judge``:
    a ``Judge`` or a spec (default ``keyword``). ``decoding``: shared by all
    defenses (default greedy, 64 new tokens). ``dtype``: of the base model's weights when ``target`` is
    loaded here (``mogu.model.loading.resolve_dtype``; None: float32). ``mogu_shifts``: also evaluate ``mogu``
    with its routers shifted by each (defenses ``mogu@+0.5``, ...; ``mogu.eval.defenses.ShiftedMoGU``).
    ``engine``: the chat defenses' answers after the routed tokens come from this engine (``mogu.engine``),
    prompt-only ones wholly; the others run in process.
    """
    from mogu.model import MoGUModel

    out = Path(out_dir)
    gen_dir = out / "generations"
    gen_dir.mkdir(parents=True, exist_ok=True)
    judge = parse_judge_spec(judge or "keyword") if not isinstance(judge, Judge) else judge
    decoding = decoding or DecodingConfig(max_new_tokens=64)
    if batch_size < 1:
        raise EvalError(f"batch_size must be at least 1, got {batch_size}")
    if not suites:
        raise EvalError("no suites to evaluate")
    given = parse_defenses(defenses) if isinstance(defenses, str) else list(defenses)
    ready = {d.name: d for d in given if isinstance(d, Defense)}
    names = with_mogu_shifts(parse_defenses([d.name if isinstance(d, Defense) else d for d in given]), mogu_shifts)
    kinds = {s.name: s.kind for s in suites}
    if len(kinds) != len(suites):
        raise EvalError("suite names must be distinct")
    prompts = [p for s in suites for p in s]

    state: dict[str, Any] = {"model": target if isinstance(target, MoGUModel) else None}
    bundle = is_bundle(target) if isinstance(target, (str, Path)) else None

    def model() -> MoGUModel:
        if state["model"] is None:
            log.info("loading %s", target)
            state["model"] = MoGUModel.load(target, dtype=dtype)
            if chat_template is not None:
                state["model"].config.chat_template = chat_template
        return state["model"]

    def has_bundle() -> bool:
        nonlocal bundle
        if bundle is None:
            bundle = is_trained(model())
        return bundle

    def get_defense(name: str) -> Defense:
        if name not in ready:
            options = dict(defense_options or {})
            sft_data = Path(target) / "data.jsonl" if isinstance(target, (str, Path)) and has_bundle() else None
            if sft_data is not None and sft_data.is_file():
                # The bundle's own training instructions, responses and framed copies: the baselines learn from
                # what MoGU learnt from.
                learnt = {"data": str(sft_data), "framing": _bundle_framing(Path(target))}
                for key in ("sft", "detect-input"):
                    options[key] = {**learnt, **options.get(key, {})}
            ready[name] = make_defense(name, model(), bundle=has_bundle(), cache_dir=out / "defenses", options=options)
        return ready[name]

    # ------------------------------------------------------------------ generation
    files = {name: gen_dir / f"{name}.jsonl" for name in names}
    todo = {}
    for name in names:
        done = done_ids(files[name], key="key")
        todo[name] = [p for p in prompts if prompt_key(p) not in done]
    if not rejudge:
        # Every defense is built (cheap: nothing is trained here), so that changed settings are caught
        # even for a defense whose answers are all cached.
        defenses_meta = {name: get_defense(name).params() for name in names}
        weights = target.base_model.dtype if isinstance(target, MoGUModel) else resolve_dtype(dtype)
        meta = {"target": _target_label(target), "dtype": str(weights).removeprefix("torch."),
                "decoding": _shared(decoding), "defenses": defenses_meta,
                "engine": engine.url if engine is not None else None}
        _check_meta(gen_dir / "meta.json", meta, names, rejudge)
        for name in names:
            if not todo[name]:
                log.info("%s: all %d answers cached", name, len(prompts))
                continue
            defense = get_defense(name)
            log.info("%s: %d of %d prompts to answer", name, len(todo[name]), len(prompts))
            started = time.perf_counter()
            defense.prepare()
            log.info("%s: ready after %.1f s", name, time.perf_counter() - started)
            batch_order = sorted(todo[name], key=lambda p: len(p.text))  # similar lengths: less padding
            with files[name].open("a", encoding="utf-8") as handle, \
                    tqdm(total=len(batch_order), desc=f"generating {name}", unit="prompt") as bar:
                for start in range(0, len(batch_order), batch_size):
                    chunk = batch_order[start : start + batch_size]
                    began = time.perf_counter()
                    if engine is not None and isinstance(defense, ChatDefense):
                        state.setdefault("engine", EngineGenerator(model(), engine))
                        answers = _engine_answers(defense, state["engine"], chunk, decoding)
                    else:
                        answers = defense.generate(chunk, decoding)
                    if len(answers) != len(chunk):
                        raise DefenseError(f"{name} returned {len(answers)} answers for {len(chunk)} prompts")
                    each = (time.perf_counter() - began) / len(chunk)
                    for prompt, answer in zip(chunk, answers):
                        append_jsonl(handle, {
                            "key": prompt_key(prompt), "suite": prompt.suite, "id": prompt.id, "kind": prompt.kind,
                            "prompt": prompt.text, "request": prompt.meta.get("request", prompt.text),
                            "response": answer, "seconds": round(each, 4),
                        })
                    bar.update(len(chunk))

    # ------------------------------------------------------------------ gates (bundles)
    gates = None
    gates_cache = gen_dir / "gates.json"
    if rejudge:
        if gates_cache.is_file():
            gates = json.loads(gates_cache.read_text(encoding="utf-8"))["gates"]
    elif gates_sample > 0 and has_bundle():
        gates = gate_summary(model(), suites, gates_sample, seed, batch_size, gates_cache)

    # ------------------------------------------------------------------ judging
    verdicts: dict[str, dict[str, list[Verdict]]] = {}
    responses: dict[str, dict[str, list[str]]] = {}
    seconds: dict[str, float] = {}
    extra: dict[str, dict[str, Any]] = {}
    saved_meta = json.loads((gen_dir / "meta.json").read_text(encoding="utf-8")) if (gen_dir / "meta.json").is_file() else {}
    previous: dict[str, Any] = {}
    if rejudge and (out / "report.json").is_file():  # keep what preparation found, without loading anything
        previous = json.loads((out / "report.json").read_text(encoding="utf-8")).get("defenses", {})
    samples_tmp = out / ".samples.jsonl.tmp"
    unparseable_total = 0
    with samples_tmp.open("w", encoding="utf-8") as samples:
        for name in names:
            saved = {r["key"]: r for _, r in read_jsonl(files[name])} if files[name].is_file() else {}
            missing = [prompt_key(p) for p in prompts if prompt_key(p) not in saved]
            if missing:
                raise EvalError(f"{files[name]}: no answers for {len(missing)} prompts (e.g. {missing[:3]}); "
                                "run without --rejudge to generate them")
            records = [saved[prompt_key(p)] for p in prompts]
            judged = _judge_records(judge, name, records, out / "verdicts" / f"{name}.jsonl", rejudge)
            verdicts[name] = {suite: [] for suite in kinds}
            responses[name] = {suite: [r["response"] for r in records if r["suite"] == suite] for suite in kinds}
            for record, verdict in zip(records, judged):
                verdicts[name][record["suite"]].append(verdict)
                unparseable_total += verdict.refused is None
                append_jsonl(samples, {
                    "defense": name, "suite": record["suite"], "kind": record["kind"], "id": record["id"],
                    "prompt": record["prompt"], "request": record["request"], "response": record["response"],
                    "refused": verdict.refused, "label": verdict.label, "harmful": verdict.harmful,
                    "raw": verdict.raw, "judge": verdict.judge, "repeated": repeated_sentence(record["response"]),
                })
            seconds[name] = sum(float(r.get("seconds", 0.0)) for r in records)
            info = ready[name].info() if name in ready else previous.get(name, {}).get("info", {})
            extra[name] = {"params": saved_meta.get("defenses", {}).get(name), "info": info}
    samples_tmp.replace(out / "samples.jsonl")
    if unparseable_total:
        log.warning("%d answers got no verdict from judge %s (counted as unparseable in the report)", unparseable_total, judge.name)

    config = {
        "target": _target_label(target),
        "dtype": saved_meta.get("dtype", "float32"),
        "judge": judge.name,
        "decoding": saved_meta.get("decoding", _shared(decoding)),
        "defenses": names,
        "suites": {s.name: {"kind": s.kind, "n": len(s), "source": str(s.source) if s.source else None} for s in suites},
        "batch_size": batch_size,
        "seed": seed,
        "rejudge": rejudge,
    }
    report = build_report(verdicts, kinds, seconds, config, extra, gates, responses)
    write_report(report, out)
    log.info("wrote %s", out / "report.json")
    return report

