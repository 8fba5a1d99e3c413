"""Generation: routed first tokens then the base model, one copy of the weights."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, LogitsProcessor

from mogu.model.config import DecodingConfig, RouterConfig
from mogu.model.generation import GenerationError, generate
from mogu.model.kv_cache import with_cache
from mogu.model import MoGUModel
from mogu.model.chat import ChatTemplateError
from tests.support.models import randomize, reader_gates, reader_override, routed_from, with_reader

PROMPTS = ["How do I bake bread?", "Tell me a poem about the sea and the sky, please, in many words", "Hi"]
GREEDY = DecodingConfig(max_new_tokens=12)


@pytest.fixture(scope="module")
def mogu(tiny_model_dirs) -> MoGUModel:
    """Routers decide at every routed position, the first decision included, as in MoGU (the reader is
    tested on its own below)."""
    return randomize(MoGUModel.from_base(str(tiny_model_dirs["llama"]), router=RouterConfig(first="routers")), seed=3)


@pytest.fixture(scope="module")
def mogu_routed_prompt(mogu) -> MoGUModel:
    """The same model, routing every prompt position as the paper does (``router.prompt`` "routed")."""
    model = copy.deepcopy(mogu)
    model.config = model.config.model_copy(update={"router": model.config.router.model_copy(update={"prompt": "routed"})})
    return model


@pytest.fixture(scope="module")
def plain(tiny_model_dirs):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()


def prompt_ids(model: MoGUModel, prompt: str) -> torch.Tensor:
    text = model.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    return model.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def plain_greedy(plain, model: MoGUModel, prompt: str, n: int) -> list[int]:
    ids = prompt_ids(model, prompt)
    out = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)
    return strip_eos(out[0, ids.shape[1]:].tolist(), model)


def strip_eos(ids: list[int], model: MoGUModel) -> list[int]:
    eos = model.tokenizer.eos_token_id
    return ids[: ids.index(eos)] if eos in ids else ids


def released_reference(model: MoGUModel, plain, prompt: str, m: int, n: int) -> list[int]:
    """The released procedure: a second full copy for the mixed model, no KV cache for the
    routed tokens (the whole sequence is re-run for each), then the base copy re-reads it all.
    Under ``router.prompt`` "base" the mixed copy routes only the last prompt token onwards."""
    mixed = copy.deepcopy(model)
    mixed.set_mode("mogu")
    ids = prompt_ids(model, prompt)
    eos = model.tokenizer.eos_token_id
    routed: list[int] = []
    with torch.no_grad():
        for _ in range(m):
            full = torch.cat([ids, torch.tensor([routed], dtype=ids.dtype)], dim=1)
            first = ids.shape[1] - 1 if model.config.router.prompt == "base" else 0
            with routed_from(mixed, first, full.shape[1]):
                logits = mixed(input_ids=full).logits
            token = int(logits[0, -1].argmax())
            routed.append(token)
            if token == eos:
                return routed[:-1]
    full = torch.cat([ids, torch.tensor([routed], dtype=ids.dtype)], dim=1)
    out = plain.generate(full, attention_mask=torch.ones_like(full), max_new_tokens=n - m, do_sample=False,
                         eos_token_id=eos, pad_token_id=model.tokenizer.pad_token_id)
    return strip_eos(routed + out[0, full.shape[1]:].tolist(), model)


@pytest.mark.parametrize("decoding", [GREEDY.model_copy(update={"routed_tokens": 0}), GREEDY.model_copy(update={"mode": "base"})])
def test_without_routing_equals_the_plain_model(mogu, plain, decoding):
    for prompt in PROMPTS:
        [result] = generate(mogu, [prompt], decoding)
        assert result.token_ids == plain_greedy(plain, mogu, prompt, 12)


def test_a_routed_answer_does_not_end_before_its_first_token(mogu):
    """Where the end of the turn is the likeliest first token, the routed answer takes the next one (an empty
    turn is neither answer nor refusal); the plain model still answers with nothing."""
    eos = mogu.tokenizer.eos_token_id

    def end_first(module, inputs, logits):
        logits = logits.clone()
        logits[..., eos] += 1e4
        return logits

    hook = mogu.base_model.get_output_embeddings().register_forward_hook(end_first)
    try:
        routed = generate(mogu, PROMPTS, GREEDY)
        plain_answers = generate(mogu, PROMPTS, GREEDY.model_copy(update={"mode": "base"}))
    finally:
        hook.remove()
    assert [len(g.token_ids) for g in routed] == [1] * len(PROMPTS)
    assert all(eos not in g.token_ids and g.finish_reason == "stop" for g in routed)
    assert [g.token_ids for g in plain_answers] == [[]] * len(PROMPTS)


def test_routing_changes_the_output(mogu, plain):
    routed = [g.token_ids for g in generate(mogu, PROMPTS, GREEDY)]
    base = [plain_greedy(plain, mogu, p, 12) for p in PROMPTS]
    assert routed != base  # the randomised experts must matter, or the tests below prove nothing


@pytest.mark.parametrize("prompt_reading", ["routed", "base"])
def test_batch_equals_one_by_one(mogu, mogu_routed_prompt, prompt_reading):
    model = mogu_routed_prompt if prompt_reading == "routed" else mogu
    decoding = GREEDY
    batched = [g.token_ids for g in generate(model, PROMPTS, decoding)]
    single = [generate(model, [p], decoding)[0].token_ids for p in PROMPTS]
    assert batched == single


@pytest.mark.parametrize("prompt_reading", ["routed", "base"])
def test_faithful_mode_matches_the_released_procedure(mogu, mogu_routed_prompt, plain, prompt_reading):
    model = mogu_routed_prompt if prompt_reading == "routed" else mogu
    decoding = GREEDY.model_copy(update={"routed_tokens": 5})
    for prompt in PROMPTS:
        [result] = generate(model, [prompt], decoding)
        assert result.token_ids == released_reference(model, plain, prompt, 5, 12)


def test_reading_the_prompt_with_the_base_model_changes_the_output(mogu, mogu_routed_prompt):
    # else the two tests above would not tell the prompt readings apart
    assert mogu.config.router.prompt == "base"
    assert [g.token_ids for g in generate(mogu, PROMPTS, GREEDY)] != [g.token_ids for g in generate(mogu_routed_prompt, PROMPTS, GREEDY)]


@pytest.mark.parametrize("later", ["routers", "reader"])
@pytest.mark.parametrize("reads", ["routed", "more"])
def test_the_reader_takes_the_first_decision_in_every_layer_and_holds_it_if_asked(tiny_dir, reads, later):
    model = with_reader(tiny_dir, reader_layers=[0, 1] if reads == "more" else None, later=later)
    decoding = GREEDY.model_copy(update={"return_gates": True, "routed_tokens": 4, "min_new_tokens": 4})
    for prompt, result in zip(PROMPTS, generate(model, PROMPTS, decoding)):
        expected = reader_gates(model, prompt_ids(model, prompt))
        assert torch.allclose(result.gates[0], expected.expand_as(result.gates[0]), atol=1e-5)
        rest = result.gates[1:]
        # later "routers": the routers decide the later tokens; "reader": its gates hold for all of them
        assert torch.allclose(rest, expected.expand_as(rest), atol=1e-3) == (later == "reader")
    assert model.state.first is None


@pytest.mark.parametrize("later", ["routers", "reader"])
@pytest.mark.parametrize("reads", ["routed", "more"])
def test_generation_with_a_reader_matches_the_released_procedure_with_its_gates(tiny_model_dirs, plain, reads, later):
    # no cache in the reference: checks that the base model's pass over the whole prompt is cut back to
    # all but its last token before the routed phase; the reader may read layers that are not routed
    model = with_reader(tiny_model_dirs["llama"], reader_layers=[0, 1] if reads == "more" else None, later=later)
    decoding = GREEDY.model_copy(update={"routed_tokens": 5})
    for prompt in PROMPTS:
        [result] = generate(model, [prompt], decoding)
        with reader_override(model, reader_gates(model, prompt_ids(model, prompt)), prompt_ids(model, prompt).shape[1] - 1):
            assert result.token_ids == released_reference(model, plain, prompt, 5, 12)
    batched = [g.token_ids for g in generate(model, PROMPTS, decoding)]
    assert batched == [generate(model, [p], decoding)[0].token_ids for p in PROMPTS]


def test_a_reader_needs_the_base_model_to_read_the_prompt():
    with pytest.raises(ValidationError, match="router.first 'reader' needs router.prompt 'base'"):
        RouterConfig(first="reader", prompt="routed")


def test_only_a_reader_can_hold_its_decision():
    with pytest.raises(ValidationError, match="router.later 'reader' needs router.first 'reader'"):
        RouterConfig(first="routers", later="reader")
    assert RouterConfig(first="routers").later == "routers"  # follows the routers unless given
    assert RouterConfig().later == "reader"


def test_training_routes_the_positions_generation_routes(mogu, mogu_routed_prompt):
    # labels mark the response: the last prompt token up to the second-last response token are routed
    # (as the released_reference above routes them), the prompt before is read by the base model
    ids = prompt_ids(mogu, PROMPTS[0])
    labels = torch.cat([torch.full_like(ids, -100), torch.tensor([[5, 6, 7]])], dim=1)
    with mogu.mode("mogu", labels=labels):
        routed = mogu.state.routed.tolist()
    assert routed == [[False] * (ids.shape[1] - 1) + [True] * 3 + [False]]
    assert mogu.state.routed is None
    with mogu_routed_prompt.mode("mogu", labels=labels):  # router.prompt "routed": every position
        assert mogu_routed_prompt.state.routed is None


def test_an_expert_trains_on_the_positions_routing_gives_it(mogu):
    # under router.prompt "base" an expert's training forward, like routing, leaves the prompt to the base model
    ids = prompt_ids(mogu, PROMPTS[0])
    full = torch.cat([ids, torch.tensor([[5, 6, 7]])], dim=1)
    labels = torch.cat([torch.full_like(ids, -100), full[:, ids.shape[1]:]], dim=1)
    with torch.no_grad(), mogu.mode("base"):
        base = mogu(input_ids=full).logits
    with torch.no_grad(), mogu.mode("glad", labels=labels):
        glad = mogu(input_ids=full).logits
    prompt = ids.shape[1] - 1
    assert torch.allclose(glad[:, :prompt], base[:, :prompt])
    assert not torch.allclose(glad[:, prompt:], base[:, prompt:], atol=1e-4)


def test_the_kv_cache_goes_by_the_name_the_model_takes(mogu):
    # transformers 5 renamed past_key_values to cache (the old name warns, and goes in 6.0); older
    # releases and remote-code models only take the old name
    class OldModel:
        def forward(self, input_ids, past_key_values=None): ...

    class NewModel:
        def forward(self, input_ids, cache=None): ...

    assert with_cache(OldModel(), "kv") == {"past_key_values": "kv"}
    assert with_cache(NewModel(), "kv") == {"cache": "kv"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        generate(mogu, PROMPTS, GREEDY)


def test_sampling_with_a_seed_is_reproducible(mogu):
    decoding = DecodingConfig(max_new_tokens=10, temperature=1.5, top_p=0.95, top_k=50, seed=7)
    first = [g.token_ids for g in generate(mogu, PROMPTS, decoding)]
    assert first == [g.token_ids for g in generate(mogu, PROMPTS, decoding)]
    other = [g.token_ids for g in generate(mogu, PROMPTS, decoding.model_copy(update={"seed": 8}))]
    assert first != other


def test_first_tokens_picks_the_routed_tokens_and_the_base_model_goes_on_after_them(mogu, plain):
    """The ``first_tokens`` hook (SafeDecoding's): made once from the encoded prompts, its processor decides the
    first ``routed_tokens`` tokens; the base model then writes what it writes after them."""
    forced = mogu.tokenizer("bread", add_special_tokens=False)["input_ids"][0]
    made, calls = [], []

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            calls.append(input_ids.shape[1])
            return torch.full_like(scores, float("-inf")).index_fill_(-1, torch.tensor([forced]), 0.0)

    def make(encoded):
        made.append(encoded["attention_mask"].shape)
        return Force()

    results = generate(mogu, PROMPTS, GREEDY.model_copy(update={"mode": "base", "routed_tokens": 3}), first_tokens=make)
    assert len(made) == 1 and made[0][0] == len(PROMPTS) and calls == [made[0][1] + i for i in range(3)]
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids[:3] == [forced] * 3
        ids = torch.cat([prompt_ids(mogu, prompt), torch.tensor([[forced] * 3])], dim=1)
        out = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GREEDY.max_new_tokens - 3,
                             do_sample=False, eos_token_id=mogu.tokenizer.eos_token_id, pad_token_id=mogu.tokenizer.pad_token_id)
        assert result.token_ids[3:] == strip_eos(out[0, ids.shape[1] :].tolist(), mogu)


def test_streaming_gives_the_same_text(mogu):
    decoding = DecodingConfig(max_new_tokens=15)
    [whole] = generate(mogu, [PROMPTS[0]], decoding)
    pieces = list(mogu.stream(PROMPTS[0], decoding))
    assert "".join(pieces) == whole.text
    assert len(pieces) > 1


def test_batched_text_callback_streams_every_row(mogu):
    seen: dict[int, str] = {}
    results = generate(mogu, PROMPTS, GREEDY, on_text=lambda row, d: seen.__setitem__(row, seen.get(row, "") + d))
    assert [seen.get(i, "") for i in range(len(PROMPTS))] == [r.text for r in results]


def test_stop_strings_end_the_text(mogu):
    [free] = generate(mogu, [PROMPTS[1]], DecodingConfig(max_new_tokens=20))
    assert len(free.text) > 4
    stop = free.text[2:4]
    [stopped] = generate(mogu, [PROMPTS[1]], DecodingConfig(max_new_tokens=20, stop=[stop]))
    assert stopped.finish_reason == "stop"
    assert stopped.text == free.text[: free.text.find(stop)]
    streamed = "".join(mogu.stream(PROMPTS[1], DecodingConfig(max_new_tokens=20, stop=[stop])))
    assert streamed == stopped.text


def test_gates_per_routed_token_and_layer(mogu):
    results = generate(mogu, PROMPTS, GREEDY.model_copy(update={"return_gates": True, "routed_tokens": 4}))
    for r in results:
        assert r.gates.shape == (r.routed_tokens, len(mogu.layers), 2)
        assert ((r.gates > 0) & (r.gates < 1)).all()
    assert generate(mogu, PROMPTS[:1], GREEDY)[0].gates is None


@pytest.mark.parametrize("prompt_reading", ["routed", "base"])
def test_first_routed_gates_are_those_at_the_last_prompt_token(mogu, mogu_routed_prompt, prompt_reading):
    # the router validation reads the first decision's gates from the trace of a left-padded batch
    model = mogu_routed_prompt if prompt_reading == "routed" else mogu
    results = generate(model, PROMPTS, GREEDY.model_copy(update={"return_gates": True}))
    for prompt, result in zip(PROMPTS, results):
        ids = prompt_ids(model, prompt)
        first = ids.shape[1] - 1 if prompt_reading == "base" else 0  # "base": the prompt before its last token unrouted
        with torch.no_grad(), model.mode("mogu", record=True), routed_from(model, first, ids.shape[1]):
            model(input_ids=ids)
        expected = torch.stack([model.state.gates[i][0, -1] for i in model.config.layers])  # (layers, 2)
        model.state.gates.clear()
        assert torch.allclose(result.gates[0], expected.float(), atol=1e-5)


def test_chat_history_is_formatted_with_the_template(mogu):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bake bread?"}]
    [result] = generate(mogu, [chat], GREEDY)
    assert result.prompt_tokens > generate(mogu, ["Bake bread?"], GREEDY)[0].prompt_tokens


def test_a_single_prompt_is_a_batch_of_one(mogu):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    for prompt in (PROMPTS[0], chat):
        [alone] = mogu.generate(prompt, GREEDY)
        assert alone.token_ids == mogu.generate([prompt], GREEDY)[0].token_ids


def test_bad_inputs_get_clear_errors(mogu):
    with pytest.raises(ChatTemplateError, match="empty prompt"):
        generate(mogu, ["  "], GREEDY)
    with pytest.raises(GenerationError, match="no prompts"):
        generate(mogu, [], GREEDY)
    with pytest.raises(GenerationError, match="exceeds the model's context"):
        generate(mogu, ["bread " * 5000], GREEDY)
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_k": -2}, {"max_new_tokens": 0}, {"stop": [""]}):
        with pytest.raises(ValidationError):
            DecodingConfig(**bad)
