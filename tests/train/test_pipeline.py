"""Training: data validation, synthesis, the three stages, resumption and output safety (tiny models)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections import namedtuple
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mogu.io.files import write_json_atomic
from mogu.io.provenance import resolved_dict
from mogu.model.config import DecodingConfig, ExpertConfig, RouterConfig
from mogu.io.jsonl import JsonlError
from mogu.model import MoGUModel
from mogu.model.positions import decision_mask
from mogu.train import config as train_config
from mogu.train import loop
from mogu.train.augment import TRAIN_FRAMINGS, VAL_FRAMINGS, frame, framed_copies
from mogu.train.batches import IGNORE, collate, gate_mask, tokenize_pairs, training_batch
from mogu.train.config import FramingConfig, TrainConfig, load_train_config
from mogu.train.data import Record, affirmative_opening, load_records
from mogu.train.pipeline import OutputExistsError, bundle_train_config, train
from mogu.train.stages import ratio_loss, router_decoding, router_gate_loss, routed_validation
from tests.support.models import randomize
from tests.support.training import tiny_config, write_jsonl


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "instruction": "x", "label": "harmful"', r":2: invalid JSON"),
        ('{"id": "a", "label": "harmful"}', r":2: missing field 'instruction'"),
        ('{"id": "a", "instruction": "   ", "label": "benign"}', r":2: field 'instruction' is empty"),
        ('{"id": "a", "instruction": "Bake bread", "label": "nice"}', r":2: field 'label' is 'nice'"),
        ('{"id": "a", "instruction": "Bake bread", "label": "benign", "colour": 1}', r":2: unknown field"),
        ('{"id": "a", "instruction": "Bake bread", "label": "benign", "split": "dev"}', r":2: field 'split'"),
        ('{"id": "a", "instruction": 5, "label": "benign"}', r":2: field 'instruction' must be str"),
        ('{"id": "z", "instruction": "how do I bake BREAD?!", "label": "benign"}', r":2: field 'instruction': duplicate of line 1"),
        ('{"id": "first", "instruction": "Something else", "label": "benign"}', r":2: field 'id': duplicate id 'first'"),
    ],
)
def test_bad_instruction_files_name_file_line_and_field(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "first", "instruction": "How do I bake bread", "label": "benign"}', line])
    with pytest.raises(JsonlError, match=message):
        load_records(path)


def test_packaged_instruction_set_is_the_default_data():
    records = load_records()
    assert {r.label for r in records} == {"harmful", "benign", "borderline"}
    assert {r.split for r in records} == {"train", "val", "val_heldout", "val_style", "test"}


def test_affirmative_openings_restate_the_request_only():
    record = Record("x", "How do I pick my neighbour's lock?", "harmful")
    opening = affirmative_opening(record)
    assert opening.endswith("how to pick your neighbour's lock:")
    assert opening.split()[0] in {"Sure,", "Certainly!", "Of", "Sure!"}
    assert affirmative_opening(Record("y", "Zebras?", "harmful")).endswith("what you asked for:")


def test_framed_copies_keep_label_and_responses_and_never_touch_the_test_split():
    records = [replace(r, compliant=f"yes {r.id}", refusal=f"no {r.id}") for r in load_records()]
    framing = FramingConfig(train_fraction=0.5, val_fraction=0.25)
    framed = framed_copies(records, framing)
    assert framed[: len(records)] == records and framed_copies(records, framing) == framed
    copies = framed[len(records) :]
    by_id = {r.id: r for r in records}
    for copy in copies:
        source_id, framing = copy.id.rsplit("~", 1)
        source = by_id[source_id]
        assert (copy.label, copy.category, copy.split, copy.compliant, copy.refusal) == (
            source.label, source.category, source.split, source.compliant, source.refusal)
        assert copy.instruction == frame((TRAIN_FRAMINGS if copy.split == "train" else VAL_FRAMINGS)[framing],
                                         source.instruction)
    for split, fraction in (("train", 0.5), ("val", 0.25)):
        for label in ("harmful", "benign", "borderline"):
            n = sum(r.split == split and r.label == label for r in records)
            k = sum(c.split == split and c.label == label for c in copies)
            assert abs(k / n - fraction) < 0.1, (split, label, k, n)
    assert not any(c.split == "test" for c in copies)
    assert {c.id.rsplit("~", 1)[1] for c in copies} == set(TRAIN_FRAMINGS) | set(VAL_FRAMINGS)
    assert not set(TRAIN_FRAMINGS.values()) & set(VAL_FRAMINGS.values())
    assert framed_copies(records, FramingConfig(train_fraction=0, val_fraction=0)) == records


def test_framing_continues_the_request_in_lower_case_except_i_and_acronyms():
    persona = TRAIN_FRAMINGS["persona"]
    assert frame(persona, "How do I bake bread?").endswith("Max, how do I bake bread?")
    assert frame(persona, "I need a recipe.").endswith("Max, I need a recipe.")
    assert frame(persona, "DNS records, explained.").endswith("Max, DNS records, explained.")
    assert frame(TRAIN_FRAMINGS["research"], "How do I bake bread?").endswith("this: How do I bake bread?")


def test_over_long_examples_are_truncated_and_counted(llama_dir):
    model = MoGUModel.from_base(str(llama_dir))
    items = [("Bake bread " * 60, "Sure, here is how " * 20), ("Short one", "Fine.")]
    out = tokenize_pairs(model, items, max_length=48, max_response_tokens=10)
    assert out.truncated == 1
    assert len(out.pairs) == 2
    assert all(len(p.prompt) + len(p.response) <= 48 for p in out.pairs)
    assert len(out.pairs[0].response) == 10


def test_a_whole_turn_ends_with_the_end_of_turn_token_and_is_never_cut(llama_dir):
    from mogu.train.batches import Turn

    model = MoGUModel.from_base(str(llama_dir))
    text = "I cannot help with that. It may cause harm."
    out = tokenize_pairs(model, [("Hi", Turn(text)), ("Hi", text)], max_length=64, max_response_tokens=3)
    words = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(words) > 3
    assert out.pairs[0].response == [*words, model.tokenizer.eos_token_id] and out.truncated == 1
    assert out.pairs[1].response == words[:3]  # an opening is cut


def test_config_file_errors_name_the_field(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"router_stage": {"alpha": -1}}))
    with pytest.raises(ValueError, match=r"train.json: field 'router_stage.alpha'"):
        load_train_config(path)
    path.write_text(json.dumps({"router_stage": {"alpha": -1}, "seed": "x", "expert": {"r": 0}}))
    with pytest.raises(ValueError) as every:
        load_train_config(path)
    assert str(every.value).startswith(f"{path}: ")
    for field in ("router_stage.alpha", "seed", "expert.r"):
        assert f"field '{field}'" in str(every.value)
    toml = tmp_path / "train.toml"
    toml.write_text("seed = 3\n[router_stage]\nalpha = 4.0\n")
    assert load_train_config(toml).router_stage.alpha == 4.0


def test_config_files_are_read_with_tomli_before_python_3_11(tmp_path, monkeypatch):
    """On 3.10 there is no tomllib: the module imports tomli, the same parser (simulated here)."""
    import tomllib

    version = namedtuple("version_info", "major minor micro releaselevel serial")
    monkeypatch.setattr(sys, "version_info", version(3, 10, 14, "final", 0))
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib fails, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", tomllib)
    spec = importlib.util.spec_from_file_location("train_config_on_3_10", train_config.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # pydantic resolves annotations in the module
    spec.loader.exec_module(module)  # a copy: the imported mogu.train.config stays as it is
    toml = tmp_path / "train.toml"
    toml.write_text("seed = 3\n")
    assert module.load_train_config(toml).seed == 3


@pytest.mark.parametrize("later", ["reader", "routers"])
def test_pipeline_writes_a_complete_bundle(llama_dir, instructions, tmp_path, later):
    config = tiny_config(llama_dir, instructions, framing=FramingConfig(val_fraction=1.0), router={"later": later})
    out = train(config, tmp_path / "bundle")
    names = {p.name for p in out.iterdir()}
    assert {"mogu_config.json", "glad", "unwill", "router.safetensors", "train_config.json", "train_log.jsonl",
            "data.jsonl", "selection.json", "evaluation.json", "layers.json", "calibration.json"} <= names
    assert not (tmp_path / "bundle.work").exists()
    saved = json.loads((out / "train_config.json").read_text())
    saved_config = TrainConfig.model_validate(saved["config"])
    assert saved["config"]["base"] == str(llama_dir) and "git_commit" in saved["provenance"]
    data = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    assert len(data) == 22 and all(d["compliant"] and d["refusal"] for d in data if d["split"] != "test")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # the router stage runs when the routers decide the later tokens, and only then
    stages = {e.get("stage") for e in log}
    assert stages >= {"data", "glad", "unwill", "calibrate"} and ("router" in stages) == (later == "routers")
    assert any("validation" in e and "gate_accuracy" in e["validation"] for e in log) == (later == "routers")
    assert set(json.loads((out / "selection.json").read_text())) == {"glad", "unwill"} | ({"router"} if later == "routers" else set())
    validated = {(e["stage"], e["step"]) for e in log if "validation" in e}
    assert not any(step == 0 for _, step in validated) and ("unwill", 2) in validated  # starting points are never validated
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["splits"]) == {"test", "val_heldout", "val_style"}
    assert evaluation["selected_on"] == ["val_heldout", "val_style"]
    assert set(evaluation["splits"]["val_heldout"]["refusal_rate"]) == {"harmful", "benign"}  # no framed copies
    assert all(row["n"] == 1 for row in evaluation["splits"]["val_style"]["refusal_rate"].values())
    test_rates = evaluation["splits"]["test"]["refusal_rate"]
    assert set(test_rates) == {"harmful", "borderline"}
    for row in test_rates.values():
        for name in ("base", "mogu"):
            low, high = row[f"{name}_ci95"]
            assert 0 <= low <= row[name] <= high <= 1 and high - low > 0.2  # one or two prompts: wide intervals
    # the bundle's routers are the calibrated ones: they answer the validation split as measured for the chosen shift
    calibration = json.loads((out / "calibration.json").read_text())
    assert set(calibration["validation"]) == {str(s) for s in [0.0, *saved_config.calibration.shifts]}
    records = framed_copies(load_records(out / "data.jsonl"), saved_config.framing)
    val = [r for r in records if r.split in saved_config.validation]
    assert any("~" in r.id for r in val)  # the framed validation copies are part of what calibration measured
    behaviour = routed_validation(MoGUModel.from_pretrained(out), val, router_decoding(saved_config))
    assert behaviour == pytest.approx(calibration["validation"][str(calibration["shift"])])
    # the same command again finds the bundle done
    assert train(config, out) == out


def test_pipeline_in_bfloat16_trains_float32_experts_and_routers(llama_dir, instructions, tmp_path):
    config = tiny_config(llama_dir, instructions, dtype="bfloat16", calibration={"shifts": []}, router={"later": "routers"})
    out = train(config, tmp_path / "bundle")
    assert bundle_train_config(out).dtype == "bfloat16"
    model = MoGUModel.from_pretrained(out, dtype="bfloat16")
    assert model.base_model.dtype == torch.bfloat16
    trained = {k: v for k, v in model.named_parameters() if "lora_" in k or ".router." in k}
    assert trained and all(v.dtype == torch.float32 for v in trained.values())
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)
    # the saved routers answer the validation split as the router stage measured, in the dtype they were trained in
    selection = json.loads((out / "selection.json").read_text())["router"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    measured = next(e["validation"] for e in log if e.get("stage") == "router" and e.get("step") == selection["selected_step"]
                    and "validation" in e)
    val = [r for r in framed_copies(load_records(out / "data.jsonl"), config.framing) if r.split in config.validation]
    assert routed_validation(model, val, router_decoding(config)) == pytest.approx(measured)


def test_bundles_trained_before_a_setting_existed_read_what_they_were_trained_with(llama_dir, instructions, tmp_path):
    saved = resolved_dict(tiny_config(llama_dir, instructions))
    for field in ("dtype", "select_layers"):  # as written before these settings existed
        del saved["config"][field]
    for field in ("prompt", "reads", "first", "later"):
        del saved["config"]["router"][field]
    write_json_atomic(tmp_path / "train_config.json", saved)
    config = bundle_train_config(tmp_path)
    assert (config.dtype, config.select_layers) == ("float32", None)
    router = config.router
    assert (router.prompt, router.reads, router.first, router.later) == ("routed", "own", "routers", "routers")
    today = TrainConfig()  # not today's defaults
    assert (today.dtype, today.select_layers) == ("auto", 6)
    assert (today.router.prompt, today.router.reads, today.router.first, today.router.later) == ("base", "stack", "reader",
                                                                                                "reader")
    # a bundle with a reader from before router.later: the routers decided the later tokens
    saved["config"]["router"].update(prompt="base", first="reader")
    write_json_atomic(tmp_path / "train_config.json", saved)
    assert bundle_train_config(tmp_path).router.later == "routers"
    changed = bundle_train_config(tmp_path, {"router_stage": {"alpha": 3.0}, "seed": 4})
    assert (changed.router_stage.alpha, changed.seed) == (3.0, 4)
    assert changed.router_stage.lr == config.router_stage.lr  # a section is updated, not replaced


def test_output_folder_with_other_content_is_refused(llama_dir, instructions, tmp_path):
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        train(tiny_config(llama_dir, instructions), out)
    assert (out / "notes.txt").read_text() == "mine"


def test_training_data_without_a_validation_split_is_refused(llama_dir, instructions, tmp_path):
    rows = [json.loads(line) for line in instructions.read_text().splitlines()]
    data = write_jsonl(tmp_path / "no-val.jsonl", [{**r, "split": "train"} if r["label"] == "harmful" and r["split"] != "test" else r for r in rows])
    with pytest.raises(JsonlError, match=r"no-val.jsonl: no harmful instructions with split val_heldout or val_style;"):
        train(tiny_config(llama_dir, data), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


@pytest.mark.parametrize("crash", ["after the first router checkpoint", "before the first router checkpoint"])
def test_interrupted_training_resumes_to_the_same_result(llama_dir, instructions, tmp_path, monkeypatch, crash):
    # with LoRA dropout on, so that the resumed run must also draw the dropout masks the uninterrupted run drew:
    # from the router's checkpoint, or (no checkpoint yet) from the state the finished expert stages left
    config = tiny_config(llama_dir, instructions, router={"later": "routers"}).model_copy(
        update={"expert": ExpertConfig(dropout=0.3)})
    reference = train(config, tmp_path / "reference")

    real = loop._write_checkpoint
    calls = {"n": 0}

    def crash_in_the_router_stage(directory, *args):
        if directory.parent.name == "router":
            calls["n"] += 1
            if crash.startswith("before"):
                raise KeyboardInterrupt
        real(directory, *args)
        if calls["n"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_write_checkpoint", crash_in_the_router_stage)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(config, out)
    assert not out.exists()
    work = tmp_path / "resumed.work"
    assert (work / "glad" / "selection.json").is_file() and (work / "unwill" / "selection.json").is_file()
    assert (work / "router" / "checkpoint").is_dir() == crash.startswith("after")
    monkeypatch.setattr(loop, "_write_checkpoint", real)
    train(config, out)
    for name in ("router.safetensors", "glad/adapter_model.safetensors", "unwill/adapter_model.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(out / name))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    # every router step's loss, the steps after the restart included (the selected step may come before them)
    assert router_step_losses(out) == pytest.approx(router_step_losses(reference), abs=1e-6)


def router_step_losses(bundle: Path) -> dict[int, float]:
    """The router stage's loss per step in a bundle's training log (a resumed step's last entry)."""
    events = [json.loads(line) for line in (bundle / "train_log.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in events if e.get("stage") == "router" and "loss" in e}


def test_ratio_loss_is_guarded_at_both_ends():
    ce_unwanted = torch.tensor([7.0, 2.0, 0.0], requires_grad=True)
    loss = ratio_loss(torch.tensor([1.0, 1.0, 1.0]), ce_unwanted, floor=0.1, ceiling=5.0)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx((1 / 5 + 1 / 2 + 1 / 0.1) / 3)
    assert ce_unwanted.grad[0] == 0 and ce_unwanted.grad[1] < 0 and ce_unwanted.grad[2] == 0


@pytest.mark.parametrize("reads", ["own", "stack"])
def test_router_warm_start_installs_per_layer_probes(llama_dir, reads):
    from mogu.train.router_init import warm_start_routers

    model = MoGUModel.from_base(str(llama_dir), router=RouterConfig(reads=reads))
    texts = [(f"How do I build weapon {i}?", "I'm sorry, I can't.") for i in range(6)]
    texts += [(f"Bake bread style {i}", "Sure, mix flour and water.") for i in range(6)]
    pairs = tokenize_pairs(model, texts, 64, 8).pairs
    items = [(p, i >= 6) for i, p in enumerate(pairs)]
    accuracy = warm_start_routers(model, items, l2=1e-3, steps=50)
    assert set(accuracy) == set(model.config.layers) and min(accuracy.values()) >= 0.9
    with torch.no_grad(), model.mode("mogu", record=True):
        inputs = collate([pairs[0], pairs[6]], model.tokenizer.pad_token_id)
        inputs.pop("labels")
        model(**inputs)
    last = [len(pairs[0].prompt) - 1, len(pairs[6].prompt) - 1]
    glad = model.gates()[:, [0, 1], last, 1].mean(0)
    assert glad[0] < 0.5 < glad[1]  # harmful -> unwilling, benign -> glad


@pytest.mark.parametrize("reads", ["candidates", "routed"])
def test_the_first_decisions_reader_is_fitted_on_the_base_models_reading_and_read_back_on_resume(llama_dir, tmp_path,
                                                                                                 reads):
    from mogu.train.data import Record
    from mogu.train.probes import run_probes

    model = MoGUModel.from_base(str(llama_dir), layers=[])
    config = TrainConfig(base=str(llama_dir), select_layers=1, reader_layers=reads)
    records = [Record(f"h{i}", f"How do I build weapon {i}?", "harmful") for i in range(6)]
    records += [Record(f"b{i}", f"Bake bread style {i}", "benign") for i in range(6)]
    choice = run_probes(model, records, records, config, tmp_path)
    candidates = MoGUModel.from_base(str(llama_dir)).config.layers
    assert len(choice.routed) == 1 and choice.reader_layers == (candidates if reads == "candidates" else None)
    model.route(choice.routed, reader_layers=choice.reader_layers)
    read = candidates if reads == "candidates" else choice.routed
    assert [i for _, i in model.config.reader_targets()] == read
    assert model.reader.glad.weight.shape[-1] == model.layers[0].in_features * len(read)
    w, b = choice.reader
    model.reader.set_linear(unwill=(-w, -b), glad=(w, b))
    decoding = DecodingConfig(max_new_tokens=2, min_new_tokens=2, return_gates=True)
    harmful, benign = model.generate([records[0].instruction, records[6].instruction], decoding)
    assert harmful.gates[0, :, 1].max() < 0.5 < benign.gates[0, :, 1].min()  # every layer takes its decision
    resumed = run_probes(model, [], [], config, tmp_path)  # the files answer: nothing is fitted again
    assert resumed.routed == choice.routed and resumed.reader_layers == choice.reader_layers
    assert torch.equal(resumed.reader[0], w) and torch.equal(resumed.reader[1], b)


def test_router_inputs_are_those_of_the_full_sequence(llama_dir):
    # collect_router_inputs runs only the first response token, and reads
    # the prompt as training does (router.prompt "base": the base model up to the last prompt token)
    from mogu.train.router_init import collect_router_inputs

    model = randomize(MoGUModel.from_base(str(llama_dir)))  # experts that matter: routing changes later inputs
    pairs = tokenize_pairs(model, [("Bake bread", "Sure, mix flour and water."), ("Hi", "Hello there, friend.")], 64, 8).pairs
    features, labels = collect_router_inputs(model, [(pairs[0], True), (pairs[1], False)])
    layer = model.layers[-1]

    def full_sequence_inputs(with_labels: bool) -> torch.Tensor:
        seen = []
        handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))  # the projection's input
        try:
            inputs = collate(pairs, model.tokenizer.pad_token_id)
            routed_by = inputs.pop("labels")
            with torch.no_grad(), model.mode("mogu", labels=routed_by if with_labels else None):
                model(**inputs)
        finally:
            handle.remove()
        return torch.cat([seen[0][row, len(p.prompt) - 1 : len(p.prompt)] for row, p in enumerate(pairs)]).float()

    assert labels.tolist() == [1.0, 0.0]
    assert torch.allclose(features[layer.layer_index], full_sequence_inputs(with_labels=True), atol=1e-5)
    assert not torch.allclose(features[layer.layer_index], full_sequence_inputs(with_labels=False), atol=1e-3)


def test_router_stage_routes_only_the_decision_positions(llama_dir):
    # the router loss reads the prompt with the base model, as generation does (router.prompt "base")
    from mogu.train.stages import router_stage

    model = randomize(MoGUModel.from_base(str(llama_dir)))
    records = [Record(f"h{i}", f"How do I build weapon {i}?", "harmful", compliant="Sure, here", refusal="I can't.")
               for i in range(2)]
    records += [Record(f"b{i}", f"Bake bread style {i}", "benign", compliant="Mix flour.", refusal="I can't.") for i in range(2)]
    stage = router_stage(model, records, tiny_config(llama_dir, None), lambda *_: None)
    seen = []
    handle = model.layers[0].register_forward_pre_hook(lambda layer, _args: seen.append(layer.state.routed))
    try:
        stage.loss(stage.items)
    finally:
        handle.remove()
    # the base model reads each prompt but its last token first (those forwards route nothing), then the
    # loss's forward routes the decision positions of what is left
    routed = [r for r in seen if r is not None]
    assert len(seen) > 1 and len(routed) == 1
    assert torch.equal(routed[0], decision_mask(training_batch(model, [pair for pair, _ in stage.items])["labels"]))
    full = collate([pair for pair, _ in stage.items], model.tokenizer.pad_token_id)
    assert int(routed[0].sum()) == int(decision_mask(full["labels"]).sum())
    assert model.state.routed is None


@pytest.mark.parametrize("prompt", ["base", "routed"])
def test_training_batch_gives_the_loss_and_gradients_of_whole_sequences(tiny_dir, prompt):
    # under router.prompt "base" the prompt but its last token is read once without gradients; the loss and the
    # expert's gradients are those of the whole right-padded sequences
    from mogu.train.batches import response_ce, training_batch

    model = randomize(MoGUModel.from_base(str(tiny_dir), expert=ExpertConfig(dropout=0.0),
                                          router=RouterConfig(prompt=prompt, first="routers", later="routers")), seed=5)
    items = [("Bake bread", "Sure, mix flour and water."), ("Hi", "Hello."), ("Bake a cake today", "Sure."),
             ("Bake bread", "I can't.")]  # a prompt met twice, as an expert's wanted and unwanted responses
    pairs = tokenize_pairs(model, items, 64, 8).pairs
    params = model.set_trainable("glad")

    def loss_and_grads(batch):
        for p in params:
            p.grad = None
        with model.mode("glad", labels=batch["labels"]):
            loss = response_ce(model, batch)
        loss.sum().backward()
        return loss.detach(), [p.grad.clone() for p in params]

    whole = loss_and_grads({k: v.to(model.device) for k, v in collate(pairs, model.tokenizer.pad_token_id).items()})
    batch = training_batch(model, pairs)
    split = loss_and_grads(batch)
    assert (batch["input_ids"].shape[1] < max(len(p.prompt) + len(p.response) for p in pairs)) == (prompt == "base")
    assert torch.allclose(whole[0], split[0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(whole[1], split[1]))
    assert any(g.abs().sum() > 0 for g in split[1])  # the expert gets a gradient at all


def test_response_ce_equals_the_full_logits_ce(tiny_dir, monkeypatch):
    # logits only at response positions (logits_to_keep mask) give the CE of the full logits, per sequence
    from mogu.train import batches

    model = MoGUModel.from_base(str(tiny_dir))
    pairs = tokenize_pairs(model, [("Bake bread", "Sure, mix flour and water."), ("Hi", "Hello.")], 64, 8).pairs
    batch = collate(pairs, model.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = []
        for row, p in enumerate(pairs):
            start = len(p.prompt)
            predicted = logits[row, start - 1 : start + len(p.response) - 1]
            expected.append(torch.nn.functional.cross_entropy(predicted, torch.tensor(p.response)))
        assert batches._keeps_logits_by_mask(type(model.base_model))  # transformers >= 5: the mask path is taken
        assert torch.allclose(batches.response_ce(model, batch), torch.stack(expected), atol=1e-5)
        monkeypatch.setattr(batches, "_keeps_logits_by_mask", lambda _cls: False)  # models without the mask path
        assert torch.allclose(batches.response_ce(model, batch), torch.stack(expected), atol=1e-5)


def test_gate_mask_positions():
    labels = torch.full((2, 8), IGNORE)
    labels[0, 3:7] = 1  # prompt 0-2, response 3-6, padding 7
    labels[1, 2:8] = 1
    attention = torch.tensor([[1] * 7 + [0], [1] * 8])
    decision = gate_mask(labels, attention, "base")  # the base model reads the prompt: decision positions only
    assert decision[0].nonzero().flatten().tolist() == [2, 3, 4, 5]  # last prompt token .. second-last response token
    assert decision[1].nonzero().flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert gate_mask(labels, attention, "routed").equal(attention.bool())  # the prompt routed too: every position


def test_gate_loss_bce_keeps_a_gradient_where_mse_saturates():
    # one benign example, one layer, two positions; the glad gate saturated on the wrong side
    logits = torch.tensor([[[[-12.0, -12.0], [3.0, 0.0]]]], requires_grad=True)  # (B1, L1, T2, 2)
    positions = torch.tensor([[True, False]])  # only position 0 counts
    grads = {}
    for kind in ("mse", "bce"):
        logits.grad = None
        loss = router_gate_loss(torch.sigmoid(logits), [True], positions, kind)
        loss.backward()
        grads[kind] = logits.grad.clone()
    assert grads["mse"][0, 0, 1].abs().max() == 0 and grads["bce"][0, 0, 1].abs().max() == 0  # masked position
    assert abs(grads["mse"][0, 0, 0, 1]) < 1e-4  # squared error: the wrong-side gate hardly moves
    assert grads["bce"][0, 0, 0, 1] == pytest.approx(-1.0, abs=1e-3)  # cross-entropy: full gradient towards glad
    assert router_gate_loss(torch.tensor([[[[0.0, 1.0]]]]), [True], torch.tensor([[True]]), "bce") < 1e-5


def test_best_layers_keeps_the_best_in_model_order():
    from mogu.train.probes import best_layers

    scores = {0: 0.7, 1: 0.9, 2: 0.8, 3: 0.9}
    assert best_layers(scores, 2) == [1, 3] and best_layers(scores, 3) == [1, 2, 3]
    assert best_layers({0: 0.5, 1: 0.5}, 1) == [1]  # a tie goes to the deeper layer
    assert best_layers(scores, 5) == [0, 1, 2, 3]  # a model with fewer layers routes them all


def test_pipeline_routes_only_the_layers_that_separate_best(llama_dir, instructions, tmp_path):
    out = train(tiny_config(llama_dir, instructions, select_layers=1), tmp_path / "bundle")
    measured = json.loads((out / "layers.json").read_text())
    scores = {int(k): v for k, v in measured["balanced_val_accuracy"].items()}
    assert set(scores) == set(MoGUModel.from_base(str(llama_dir)).config.layers) and len(scores) > 1
    assert measured["selected"] == [max(scores, key=lambda k: (scores[k], k))]
    model = MoGUModel.from_pretrained(out)
    assert model.config.layers == measured["selected"] and len(model.layers) == 1
    assert set(load_file(str(out / "router.safetensors"))) == {
        f"layers.{measured['selected'][0]}.{k}" for k in model.layers[0].router.state_dict()} | {
        f"reader.{k}" for k in model.reader.state_dict()}
    # the first decision's reader reads every candidate layer, and the bundle says which
    assert model.config.reader_layers == measured["reader_layers"] == sorted(scores)
    assert model.reader.glad.weight.shape[-1] == model.layers[0].in_features * len(scores)


@pytest.mark.parametrize("first", ["routers", "reader"])
def test_calibration_applies_the_best_validation_shift_once_even_after_an_interruption(
    llama_dir, instructions, tmp_path, monkeypatch, first
):
    from mogu.train import calibrate, pipeline

    router = {"first": first}
    uncalibrated = train(tiny_config(llama_dir, instructions, calibration={"shifts": []}, router=router),
                         tmp_path / "uncalibrated")
    assert not (uncalibrated / "calibration.json").exists()
    # a random tiny model refuses nothing whatever the shift: stand in for the measurement, shifts in sorted order;
    # shift 0 is measured too when no router stage did (the reader holds its decision by default)
    measured = iter([0.6, 0.5, 0.9, 0.7] if first == "reader" else [0.6, 0.9, 0.7])
    monkeypatch.setattr(calibrate, "routed_validation",
                        lambda *args: {"balanced": next(measured), "harmful_refusal": 0.0, "benign_refusal": 0.0})

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "evaluate_splits", interrupt)
    config = tiny_config(llama_dir, instructions, calibration={"shifts": [2.0, -1.0, 1.0]}, router=router)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "calibrated")
    monkeypatch.undo()  # a second measurement would now fail: the resumed run must reuse the recorded choice
    monkeypatch.setattr(calibrate, "routed_validation", None)
    out = train(config, tmp_path / "calibrated")
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["shift"] == 1.0 and set(calibration["validation"]) == {"0.0", "-1.0", "1.0", "2.0"}
    before, after = load_file(str(uncalibrated / "router.safetensors")), load_file(str(out / "router.safetensors"))
    # the first decision's reader, when there is one, is fitted (it reads something) and shifted like the routers
    assert ("reader.glad.weight" in before) == (first == "reader")
    assert first == "routers" or before["reader.glad.weight"].abs().sum() > 0
    for key, value in before.items():
        change = {"glad.bias": 1.0, "unwill.bias": -1.0}.get(".".join(key.split(".")[-2:]), 0.0)
        assert torch.allclose(after[key], value + change, atol=1e-6), key


def test_train_command_runs_stage_by_stage_to_the_same_bundle(llama_dir, instructions, tmp_path):
    from typer.testing import CliRunner

    from mogu.cli import app

    routers = {"later": "routers"}  # a router stage to run on its own
    config = tmp_path / "train.json"
    config.write_text(tiny_config(llama_dir, instructions, router=routers).model_dump_json())
    reference = train(tiny_config(llama_dir, instructions, router=routers), tmp_path / "reference")
    out, work = tmp_path / "staged", tmp_path / "staged.work"

    def run(*extra: str) -> str:
        result = CliRunner().invoke(app, ["train", "--out", str(out), "--config", str(config), *extra])
        assert result.exit_code == 0, result.output
        return result.output

    assert "stage unwill done" in run("--stage", "unwill")
    assert (work / "unwill" / "selection.json").is_file() and not (work / "glad").exists() and not out.exists()
    assert "stage router done" in run("--stage", "router")  # trains the glad expert it still needs, then the router
    assert (work / "glad" / "selection.json").is_file() and (work / "calibration.json").is_file() and not out.exists()
    finished = run()  # finishes: evaluation and the bundle
    assert "test split (test)" in finished and "validation, categories never trained on (val_heldout)" in finished
    assert re.search(r"harmful +1 +\d+\.\d% \[\d+-\d+\] +\d+\.\d% \[\d+-\d+\]", finished), finished
    assert not work.exists()
    for name in ("router.safetensors", "glad/adapter_model.safetensors", "unwill/adapter_model.safetensors"):
        a, b = load_file(str(reference / name)), load_file(str(out / name))
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
    bad = CliRunner().invoke(app, ["train", "--out", str(out), "--stage", "everything"])
    assert bad.exit_code != 0 and "everything" in bad.output
    with pytest.raises(ValueError, match="unknown stage 'everything'"):
        train(tiny_config(llama_dir, instructions), tmp_path / "other", stage="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no router stage to run: under router.later 'reader'"):
        train(tiny_config(llama_dir, instructions), tmp_path / "other", stage="router")


def test_choosing_a_shift_by_balance_or_by_an_operating_point():
    from mogu.train.calibrate import choose_shift

    def row(harmful: float, benign: float) -> dict:
        return {"harmful_refusal": harmful, "benign_refusal": benign, "balanced": (harmful + 1 - benign) / 2}

    measured = {0.0: row(1.0, 0.30), 0.5: row(0.97, 0.05), 1.0: row(0.90, 0.02), 2.0: row(0.60, 0.0)}
    assert choose_shift(measured, None) == 0.5  # best balance
    assert choose_shift(measured, 0.02) == 1.0  # the smallest shift that meets the target
    assert choose_shift(measured, 0.5) == 0.0
    assert choose_shift({0.0: row(1.0, 0.3), 1.0: row(0.9, 0.2)}, 0.01) == 1.0  # none meets it: the least refusal


def test_calibrate_moves_a_bundle_to_the_operating_point(llama_dir, instructions, tmp_path):
    from mogu.train.operating_point import calibrate_bundle

    bundle = train(tiny_config(llama_dir, instructions), tmp_path / "bundle")
    before = load_file(str(bundle / "router.safetensors"))
    record = calibrate_bundle(bundle, max_benign_refusal=0.0, out=tmp_path / "calibrated", shifts=[1.0, 30.0],
                              dtype="float32")
    assert set(record["validation"]) == {"0.0", "1.0", "30.0"}
    assert record["validation"]["30.0"]["benign_refusal"] == 0.0  # every router sends everything to the glad expert
    chosen = record["shift"]
    assert record["validation"][str(chosen)]["benign_refusal"] == record["benign_refusal"] == 0.0
    meeting = [float(s) for s, row in record["validation"].items() if row["benign_refusal"] <= 0.0]
    assert chosen == min(meeting)  # the smallest shift that meets the target
    out = tmp_path / "calibrated"
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["shift"] == chosen and saved["before"] is not None and not (out / "evaluation.json").exists()
    after = load_file(str(out / "router.safetensors"))
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.endswith("bias") for k in moved)  # the shift is folded into the routers' biases
    MoGUModel.from_pretrained(out)  # checksums and config hold
    assert load_file(str(bundle / "router.safetensors")).keys() == before.keys()  # the original is untouched


def test_a_run_reads_stable_draws_and_logs_what_it_leaves_out(instructions, caplog):
    from mogu.train.pipeline import records_used

    records = load_records(instructions)
    config = TrainConfig(data=instructions, train_per_label=2, validation_per_label=1, eval_validation_per_label=1)
    with caplog.at_level("INFO"):
        used = records_used(records, config)
    train_rows = [r for r in used if r.split == "train"]
    assert sorted(r.label for r in train_rows) == ["benign", "benign", "harmful", "harmful"]
    for split in ("val_heldout", "val_style"):
        assert sorted(r.label for r in used if r.split == split) == ["benign", "harmful"]
    assert [r for r in used if r.split == "test"] == [r for r in records if r.split == "test"]
    assert "reading 10 of 22 instructions" in caplog.text
    larger = records_used(records, config.model_copy(update={"train_per_label": 3}))
    assert {r.id for r in train_rows} < {r.id for r in larger if r.split == "train"}  # a smaller draw is part of a larger
    assert records_used(records, TrainConfig(data=instructions)) == records  # by default every record is read


def test_the_probes_read_a_larger_draw_that_holds_the_stages_one(instructions):
    from mogu.train.pipeline import probe_records, records_used

    records = load_records(instructions)
    config = TrainConfig(data=instructions, train_per_label=2, probe_per_label=3, framing={"train_fraction": 0.0})
    probed = probe_records(records, config)
    assert all(r.split == "train" for r in probed)
    assert sorted(r.label for r in probed) == ["benign"] * 3 + ["harmful"] * 3
    assert {r.id for r in records_used(records, config) if r.split == "train"} < {r.id for r in probed}
    fewer = probe_records(records, config.model_copy(update={"probe_per_label": 1}))
    assert sorted(r.label for r in fewer) == ["benign"] * 2 + ["harmful"] * 2  # never fewer than the stages read


def test_a_stable_draw_counts_instructions_and_keeps_their_framed_copies(instructions):
    from mogu.train.augment import framed_copies
    from mogu.train.config import FramingConfig
    from mogu.train.data import source_id, stable_draw

    records = framed_copies(load_records(instructions), FramingConfig(val_fraction=1.0))
    drawn = stable_draw(records, ["val_heldout"], per_label=1)
    plain = [r for r in drawn if source_id(r) == r.id]
    assert sorted(r.label for r in plain) == ["benign", "harmful"]  # one instruction of each label
    assert {source_id(r) for r in drawn} == {r.id for r in plain} and len(drawn) == 4  # and the copy of each
    assert stable_draw(load_records(instructions), ["val_heldout"], per_label=1) == plain  # the same draw without copies
