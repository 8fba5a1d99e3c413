"""The MoGU layer injected into stock models, for every supported architecture."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from transformers import AutoModelForCausalLM

from mogu.model.config import DecodingConfig, RouterConfig
from mogu.model.generation import encode_prompts, generate
from mogu.model import MoGUModel
from mogu.model.bundle_files import read_config
from mogu.model.layer import MoGULayer
from mogu.model.router import Router

from tests.support.models import batch, randomize, reader_gates, reader_override, routed_from, with_reader


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def mogu(tiny_dir) -> MoGUModel:
    return randomize(MoGUModel.from_base(str(tiny_dir)))


def test_targets_are_attention_output_projections(mogu, arch):
    expected = {
        "gpt2": "attn.c_proj",
        "falcon": "self_attention.dense",
    }.get(arch, "self_attn.o_proj")
    assert len(mogu.layers) == 2
    assert all(name.endswith(expected) for name in mogu.config.target_modules)
    assert mogu.config.layers == [0, 1]


def test_base_mode_is_exactly_the_stock_model(mogu, tiny_dir, tiny_tokenizer):
    stock = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    inputs = batch(tiny_tokenizer)
    with mogu.mode("base"):
        assert torch.equal(logits(mogu, inputs), logits(stock, inputs))
    with mogu.mode("mogu"):
        assert not torch.allclose(logits(mogu, inputs), logits(stock, inputs))


@pytest.mark.parametrize("expert", ["glad", "unwill"])
def test_expert_mode_equals_peft_model(mogu, tiny_dir, tiny_tokenizer, tmp_path, expert):
    mogu.save_expert(expert, tmp_path / expert)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / expert).eval()
    inputs = batch(tiny_tokenizer)
    with mogu.mode(expert):
        ours = logits(mogu, inputs)
    theirs = logits(peft_model, inputs)
    assert (ours - theirs).abs().max().item() < 1e-5
    with peft_model.disable_adapter():
        assert (ours - logits(peft_model, inputs)).abs().max().item() > 1e-3  # the adapter does something


def test_fixed_weights_select_an_expert(mogu, tiny_tokenizer):
    inputs = batch(tiny_tokenizer)
    for fixed, expert in (((0.0, 1.0), "glad"), ((1.0, 0.0), "unwill")):
        with mogu.mode("fixed", fixed=fixed):
            mixed = logits(mogu, inputs)
        with mogu.mode(expert):
            single = logits(mogu, inputs)
        assert (mixed - single).abs().max().item() < 1e-5


def test_layer_output_matches_the_mogu_formula():
    from mogu.model.config import ExpertConfig
    from mogu.model.layer import RoutingState

    torch.manual_seed(0)
    state = RoutingState(mode="mogu", record=True)
    base = torch.nn.Linear(16, 12, bias=True)
    layer = MoGULayer(base, 3, ExpertConfig(dropout=0.0), RouterConfig(shape="linear"), state)
    for p in layer.lora_B.parameters():
        torch.nn.init.normal_(p)
    x = torch.randn(2, 5, 16)
    out = layer(x)
    w = state.gates[3]
    assert w.shape == (2, 5, 2)
    s = layer.scaling
    d_u = s * x @ layer.lora_A["unwill"].weight.T @ layer.lora_B["unwill"].weight.T
    d_g = s * x @ layer.lora_A["glad"].weight.T @ layer.lora_B["glad"].weight.T
    expected = w[..., :1] * (base(x) + d_u) + w[..., 1:] * (base(x) + d_g)
    assert torch.allclose(out, expected, atol=1e-5)


def test_gates_are_recorded_per_layer_and_token(mogu, tiny_tokenizer):
    inputs = batch(tiny_tokenizer)
    with mogu.mode("mogu", record=True):
        mogu(**inputs)
    gates = mogu.gates()
    assert gates.shape == (2, *inputs["input_ids"].shape, 2)
    assert ((gates >= 0) & (gates <= 1)).all() and gates.std() > 0


def test_a_stacking_router_scores_the_inputs_of_the_routed_layers_below(tiny_dir, tiny_tokenizer):
    model = randomize(MoGUModel.from_base(str(tiny_dir), router=RouterConfig(reads="stack")))
    assert [layer.reads for layer in model.layers] == [(0,), (0, 1)]
    inputs: dict[int, torch.Tensor] = {}
    handles = [layer.register_forward_pre_hook(lambda m, args: inputs.__setitem__(m.layer_index, args[0]))
               for layer in model.layers]
    with torch.no_grad(), model.mode("mogu", record=True):
        model(**batch(tiny_tokenizer))
    for handle in handles:
        handle.remove()
    gates = model.state.gates
    with torch.no_grad():
        assert torch.allclose(gates[0], model.layers[0].router(inputs[0]))
        assert torch.allclose(gates[1], model.layers[1].router(torch.cat([inputs[0], inputs[1]], dim=-1)))
        assert not torch.allclose(gates[1], model.layers[1].router(torch.cat([inputs[1], inputs[1]], dim=-1)))


def test_stacking_routers_train_as_routers_of_their_concatenated_reading(tiny_dir, tiny_tokenizer, monkeypatch):
    """The model projects each input once for every router reading it; gates and gradients must be those of
    routers that score the concatenated inputs (Router.score), as the docs describe them."""
    model = randomize(MoGUModel.from_base(str(tiny_dir), router=RouterConfig(reads="stack")))

    def gates_and_gradients() -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
        model.zero_grad()
        with model.mode("mogu", record=True):
            model(**batch(tiny_tokenizer))
        gates = {k: v.detach().clone() for k, v in model.state.gates.items()}
        sum(v.sum() for v in model.state.gates.values()).backward()
        return gates, {n: p.grad.clone() for n, p in model.named_parameters() if ".router." in n}

    fused = gates_and_gradients()
    pieces: list[torch.Tensor] = []

    def concatenated(self, x):
        if len(self.reads) == 1:
            pieces.clear()
        pieces.append(self.router.prepare(x))
        return self.router.score(torch.cat(pieces, dim=-1))

    monkeypatch.setattr(MoGULayer, "_gates", concatenated)
    reference = gates_and_gradients()
    for got, want in zip(fused, reference):
        assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-5) for k in got)


def test_each_routed_input_is_prepared_once_per_forward(tiny_dir, tiny_tokenizer, monkeypatch):
    """Stacking routers reuse the normalised inputs of the layers below instead of normalising them again."""
    model = randomize(MoGUModel.from_base(str(tiny_dir), router=RouterConfig(reads="stack")))
    prepared: list[int] = []
    original = Router.prepare
    monkeypatch.setattr(Router, "prepare", lambda self, piece: prepared.append(piece.shape[-1]) or original(self, piece))
    with torch.no_grad(), model.mode("mogu"):
        model(**batch(tiny_tokenizer))
    assert prepared == [layer.in_features for layer in model.layers]


@pytest.mark.parametrize("shape,reads", [("paper", "own"), ("linear", "own"), ("linear", "stack")])
def test_save_load_round_trip(tiny_dir, tiny_tokenizer, tmp_path, shape, reads):
    model = randomize(MoGUModel.from_base(str(tiny_dir), router=RouterConfig(shape=shape, hidden=8, reads=reads)))
    model.save_pretrained(tmp_path / "bundle")
    loaded = MoGUModel.from_pretrained(tmp_path / "bundle", fold_routers=False)
    inputs = batch(tiny_tokenizer)
    for mode in ("mogu", "glad", "unwill"):
        with model.mode(mode), loaded.mode(mode):
            assert torch.equal(logits(model, inputs), logits(loaded, inputs))
    assert loaded.config == model.config


def test_a_reader_of_layers_that_are_not_routed_survives_save_and_load(tiny_dir, tmp_path):
    model = with_reader(tiny_dir, reader_layers=[0, 1])
    assert model.config.layers == [1] and model.config.reader_layers == [0, 1]
    model.save_pretrained(tmp_path / "bundle")
    loaded = MoGUModel.from_pretrained(tmp_path / "bundle")
    assert loaded.config == model.config
    decoding = DecodingConfig(max_new_tokens=3, return_gates=True)
    prompts = ["How do I bake bread?", "Hi"]
    for ours, theirs in zip(model.generate(prompts, decoding), loaded.generate(prompts, decoding)):
        assert ours.token_ids == theirs.token_ids and torch.equal(ours.gates, theirs.gates)


def test_reader_modules_and_layers_come_together():
    from mogu.model.config import BaseModelInfo, MoGUConfig

    with pytest.raises(ValidationError, match="reader_modules and reader_layers"):
        MoGUConfig(base=BaseModelInfo(source="x"), target_modules=["a"], layers=[0], reader_modules=["a", "b"],
                   reader_layers=[0])


@pytest.mark.parametrize("reads,first", [("own", "routers"), ("stack", "routers"), ("stack", "reader")])
def test_generation_reads_the_prompt_as_training_does(tiny_dir, reads, first):
    # router.prompt "base": a base-mode prefill of the prompt, then the routed phase on its cache, in a
    # left-padded batch, picks the tokens one forward over the whole sequence picks with the last prompt
    # token onwards routed (every architecture's cache and position ids); with a reader (router.first), its
    # gates at the last prompt token (the prefill reads that token too, then its cache is cut back)
    mogu = with_reader(tiny_dir) if first == "reader" else randomize(
        MoGUModel.from_base(str(tiny_dir), router=RouterConfig(reads=reads, first=first)))
    prompts = ["How do I bake bread in a hot oven?", "Hi"]
    results = generate(mogu, prompts, DecodingConfig(max_new_tokens=4, routed_tokens=4))
    for prompt, result in zip(prompts, results):
        ids = encode_prompts(mogu, [prompt], 4)["input_ids"]
        gates = reader_gates(mogu, ids) if first == "reader" else None
        for k, token in enumerate(result.token_ids):
            full = torch.cat([ids, torch.tensor([result.token_ids[:k]], dtype=ids.dtype)], dim=1)
            reader = reader_override(mogu, gates, ids.shape[1] - 1) if gates is not None else nullcontext()
            with mogu.mode("mogu"), routed_from(mogu, ids.shape[1] - 1, full.shape[1]), reader:
                assert int(logits(mogu, {"input_ids": full})[0, -1].argmax()) == token


@pytest.mark.parametrize("field,older", [("prompt", "routed"), ("reads", "own"), ("first", "routers")])
def test_bundles_saved_before_a_router_field_existed_keep_their_behaviour(llama_dir, tmp_path, field, older):
    # bundles written before router.prompt, router.reads and router.first existed; the current defaults are
    # "base", "stack" and "reader"
    model = MoGUModel.from_base(str(llama_dir), router=RouterConfig(**{"first": "routers", field: older}))
    model.save_pretrained(tmp_path / "bundle")
    path = tmp_path / "bundle" / "mogu_config.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    del saved["config"]["router"][field]  # as written by mogu before the field existed
    path.write_text(json.dumps(saved), encoding="utf-8")
    assert getattr(RouterConfig(), field) != older
    assert getattr(read_config(tmp_path / "bundle").router, field) == older
    assert MoGUModel.from_pretrained(tmp_path / "bundle").config.router == model.config.router


@pytest.mark.parametrize("stage", ["glad", "unwill", "router"])
def test_gradients_reach_only_the_stage_parameters(mogu, tiny_tokenizer, stage):
    trainable = mogu.set_trainable(stage)
    inputs = batch(tiny_tokenizer)
    with mogu.mode("mogu" if stage == "router" else stage):
        loss = mogu(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    wanted = {id(p) for p in trainable}
    with_grad = {id(p) for p in mogu.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= wanted
    assert len(with_grad) == len(wanted)


def test_layer_restriction(tiny_dir):
    model = MoGUModel.from_base(str(tiny_dir), layers=[1])
    assert model.config.layers == [1]
    assert len(model.layers) == 1


def test_routing_a_model_that_routes_nothing_equals_a_model_built_on_those_layers(tiny_dir):
    # what the pipeline does after layer selection: only the chosen layers ever get a MoGU layer
    torch.manual_seed(0)
    model = MoGUModel.from_base(str(tiny_dir), layers=[])
    assert model.layers == [] and model.reader is None
    assert not any(isinstance(m, MoGULayer) for m in model.base_model.modules())
    rng = torch.get_rng_state()
    model.route([1])
    torch.set_rng_state(rng)
    reference = MoGUModel.from_base(str(tiny_dir), layers=[1])
    assert model.config == reference.config and [layer.layer_index for layer in model.layers] == [1]
    assert sum(isinstance(m, MoGULayer) for m in model.base_model.modules()) == 1
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the new layers keep the model's mode: a loaded model is in eval mode, so no LoRA dropout
    assert not any(m.training for m in model.base_model.modules())
    with pytest.raises(ValueError, match=r"already routes layers \[1\]"):
        model.route([0])
    trained = MoGUModel.from_base(str(tiny_dir), layers=[])
    trained.train()
    trained.route([1])
    assert all(m.training for m in trained.base_model.modules())


@pytest.mark.parametrize("reads", ["own", "stack"])
def test_parameter_counts(llama_dir, reads):
    paper = MoGUModel.from_base(str(llama_dir), router=RouterConfig(shape="paper", hidden=16, reads="own"))
    paper = paper.parameter_counts()
    linear = MoGUModel.from_base(str(llama_dir), router=RouterConfig(shape="linear", reads=reads)).parameter_counts()
    d = 32  # hidden size of the tiny llama = o_proj in/out
    inputs = [d, d] if reads == "own" else [d, 2 * d]  # the second of two layers also reads the first one's input
    assert linear["router"] == sum(2 * (n + 1) for n in inputs)
    assert paper["router"] == 2 * 2 * (d * 16 + 16 * d + d + d + 1)
    assert paper["expert_glad"] == 2 * 8 * (d + d)
    assert paper["base"] == linear["base"] == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(llama_dir).parameters()
    )


def test_folded_paper_router_is_the_same_function(tiny_dir, tiny_tokenizer, tmp_path):
    model = randomize(MoGUModel.from_base(str(tiny_dir), router=RouterConfig(shape="paper", hidden=16, reads="own")))
    inputs = batch(tiny_tokenizer)
    with torch.no_grad(), model.mode("mogu", record=True):
        before, gates = model(**inputs).logits, model.gates().clone()
    model.save_pretrained(tmp_path / "b")
    folded = MoGUModel.from_pretrained(tmp_path / "b")
    assert folded.config.router.shape == "linear"
    assert all(isinstance(layer.router.glad, torch.nn.Linear) for layer in folded.layers)
    assert folded.parameter_counts()["router"] < model.parameter_counts()["router"]
    with torch.no_grad(), folded.mode("mogu", record=True):
        assert torch.allclose(folded(**inputs).logits, before, atol=1e-4)
        assert torch.allclose(folded.gates(), gates, atol=1e-5)


def test_the_paper_router_shape_reads_its_own_layer_only():
    with pytest.raises(ValueError, match="router.shape 'paper' needs router.reads 'own'"):
        RouterConfig(shape="paper")


def test_a_router_of_several_inputs_normalises_each_on_its_own():
    torch.manual_seed(0)
    router = Router(12, RouterConfig(), pieces=2)
    lower, own = torch.randn(5, 12), torch.randn(5, 12)
    assert torch.allclose(router(torch.cat([lower, own], -1)), router(torch.cat([7 * lower, own], -1)), atol=1e-6)
    assert not torch.allclose(router(torch.cat([lower, own], -1)), router(torch.cat([lower, 7 * own + 1], -1)))


@pytest.mark.parametrize("shape", ["paper", "linear"])
def test_router_set_linear_is_exact(shape):
    router = Router(12, RouterConfig(shape=shape, hidden=8, input_norm=False, reads="own"))
    w_u, w_g = torch.randn(12), torch.randn(12)
    router.set_linear(unwill=(w_u, torch.tensor(0.3)), glad=(w_g, torch.tensor(-0.2)))
    x = torch.randn(5, 12)
    expected = torch.sigmoid(torch.stack([x @ w_u + 0.3, x @ w_g - 0.2], dim=-1))
    assert torch.allclose(router(x), expected, atol=1e-5)
    router.shift_towards_glad(0.7)
    shifted = torch.sigmoid(torch.stack([x @ w_u + 0.3 - 0.7, x @ w_g - 0.2 + 0.7], dim=-1))
    assert torch.allclose(router(x), shifted, atol=1e-5)


def test_gguf_conversion_leaves_the_callers_random_stream_alone(llama_dir, tmp_path, monkeypatch):
    """A first run converts the GGUF file, later runs read the cache: both must draw the same LoRA initialisations."""
    from transformers import AutoTokenizer

    from mogu.model import loading

    load_model, load_tokenizer = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained
    # stand-ins for transformers' GGUF reader: the tiny model's folder plays the de-quantised file
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", lambda _dir, gguf_file, **kw: load_model(llama_dir, **kw))
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", lambda _dir, gguf_file, **kw: load_tokenizer(llama_dir, **kw))
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    loading.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "converted")
    assert torch.equal(torch.random.get_rng_state(), before)
    converted = load_model(tmp_path / "converted")
    reference = load_model(llama_dir)
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(), reference.state_dict().values()))


def test_dtype_auto_picks_bfloat16_only_where_it_is_fast(monkeypatch):
    from mogu.model import loading

    assert loading.resolve_dtype(None) is torch.float32
    assert loading.resolve_dtype("bfloat16") is torch.bfloat16
    assert loading.resolve_dtype(torch.float16) is torch.float16
    monkeypatch.setattr(loading, "fast_bf16", lambda device=None: True)
    assert loading.resolve_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(loading, "fast_bf16", lambda device=None: False)
    assert loading.resolve_dtype("auto") is torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'half'"):
        loading.resolve_dtype("half")


@pytest.mark.parametrize("feature", ["_is_amx_tile_supported", "_is_avx512_bf16_supported"])
def test_bfloat16_is_fast_on_a_cpu_with_amx_tiles_or_avx512_bf16(monkeypatch, feature):
    from mogu.model.loading import fast_bf16

    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not fast_bf16("cpu")
    monkeypatch.setattr(torch.cpu, feature, lambda: True, raising=False)
    assert fast_bf16("cpu") == torch.backends.mkldnn.is_available()


def test_vocabulary_projection_reads_a_contiguous_input(llama_dir):
    """generate hands it a strided slice (the last prompt position), which torch multiplies slowly on CPU."""
    model = MoGUModel.from_base(str(llama_dir))
    contiguous: list[bool] = []
    model.base_model.get_output_embeddings().register_forward_pre_hook(
        lambda _module, args: contiguous.append(args[0].is_contiguous()))
    model.generate(["Hello there", "A rather longer prompt than that one"], DecodingConfig(max_new_tokens=3, mode="base"))
    assert len(contiguous) == 3 and all(contiguous)


def test_bfloat16_base_keeps_float32_experts_and_routers(llama_dir):
    model = MoGUModel.from_base(str(llama_dir), dtype="bfloat16")
    assert model.base_model.dtype == torch.bfloat16
    for layer in model.layers:
        assert all(p.dtype == torch.float32 for m in (layer.lora_A, layer.lora_B, layer.router) for p in m.parameters())
    randomize(model)
    [result] = model.generate(["Hello there"], DecodingConfig(max_new_tokens=4, return_gates=True))
    assert result.gates is not None and result.gates.dtype == torch.float32 and result.gates.shape[1:] == (len(model.layers), 2)
