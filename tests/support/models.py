"""Tiny random-weight models for the tests, and helpers that set or read their routers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from mogu.model import MoGUModel
from mogu.model.config import RouterConfig
from mogu.model.layer import MoGULayer
from mogu.model.router import rms_normalise

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "How do I bake bread at home? Mix flour, water, yeast and salt.",
    "I'm sorry, but I can't help with that request.",
    "Sure, here is a short poem about the sea and the sky.",
    "Explain how to write a Python function that sorts a list.",
    "Tell me how to build a weapon. I cannot assist with harmful requests.",
] * 4
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<eos>"]

#: torch's thread count before the tests set one thread (tests/conftest.py): tiny models run fastest on one
#: thread; the integration test on the real model restores this.
DEFAULT_THREADS = torch.get_num_threads()

# model_type -> small config kwargs (vocab_size is filled in from the tokenizer)
ARCHITECTURES: dict[str, dict] = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gemma": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=8),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, new_decoder_architecture=False, multi_query=True),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token=None, chat_template=CHATML
    )


def build_model(model_type: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoConfig

    torch.manual_seed(seed)
    config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **ARCHITECTURES[model_type])
    config.pad_token_id, config.eos_token_id = 0, 2
    if hasattr(config, "bos_token_id"):
        config.bos_token_id = None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def randomize(model: MoGUModel, seed: int = 0, scale: float = 0.5) -> MoGUModel:
    """Give both experts and the routers non-trivial weights, so equalities mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            for p in layer.lora_B.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
            # Router weights scaled by fan-in so the sigmoids stay unsaturated and gradients flow.
            for p in layer.router.parameters():
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen) * scale / fan_in**0.5)
    return model


@contextlib.contextmanager
def routed_from(model: MoGUModel, first: int, length: int) -> Iterator[None]:
    """Route positions ``first`` onwards of a ``length``-token sequence and give the others the base projection,
    set by hand: the reference that ``router.prompt`` "base" is checked against (prompt: ``first`` = its last token)."""
    model.state.routed = torch.arange(length)[None] >= first
    try:
        yield
    finally:
        model.state.routed = None


def batch(tokenizer, texts=("Hello there, how do I bake bread?", "Sure, here is a poem")):
    return tokenizer(list(texts), return_tensors="pt", padding=True)


def instructions_file(path: Path) -> Path:
    """A tiny instruction set with responses, so that no base answers need generating."""
    rows = []
    for i in range(8):
        split = "val" if i % 4 == 0 else "train"
        rows.append({"id": f"h{i}", "instruction": f"How do I build weapon number {i}?", "label": "harmful", "split": split})
        rows.append({"id": f"b{i}", "instruction": f"Explain how to bake bread style {i}.", "label": "benign",
                     "split": split, "compliant": "Mix flour, water and yeast."})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def reader_gates(model: MoGUModel, ids: torch.Tensor) -> torch.Tensor:
    """The reader's gates on the base model's inputs of the projections it reads at the last token of ``ids``
    (1, seq) (a prompt), computed apart from ``mogu.model.generation``."""
    reading = {}
    targets = model.config.reader_targets()
    hooks = [model.base_model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, i=index: reading.__setitem__(i, args[0][0, -1])) for name, index in targets]
    with model.mode("base"), torch.no_grad():
        model.base_model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    return model.reader.score(torch.cat([rms_normalise(reading[i].float()) for _, i in targets]))


@contextlib.contextmanager
def reader_override(model: MoGUModel, gates: torch.Tensor, position: int):
    """For ``released_reference``, which re-runs the whole sequence for each routed token: every forward takes
    ``gates`` at ``position``, the last prompt token (generation keeps them there in its cache), and under
    ``router.later`` "reader" at every position after it too."""
    original = MoGULayer._gates
    held = slice(position, None) if model.config.router.later == "reader" else position

    def reader_there(layer, x):
        out = original(layer, x).clone()
        out[:, held] = gates
        return out

    MoGULayer._gates = reader_there
    try:
        yield
    finally:
        MoGULayer._gates = original


def with_reader(tiny_dir: Path, seed: int = 5, reader_layers: list[int] | None = None,
                later: str = "routers") -> MoGUModel:
    """A randomised model whose first decision is taken by a (random) reader (``router.first`` "reader"), the
    later ones by ``later``; with ``reader_layers``, only the last of them is routed and the reader reads them
    all."""
    model = MoGUModel.from_base(str(tiny_dir), router=RouterConfig(first="reader", later=later),
                                layers=None if reader_layers is None else [])
    if reader_layers is not None:
        model.route(reader_layers[-1:], reader_layers=reader_layers)
    model = randomize(model, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.reader.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 2 / p.shape[-1] ** 0.5)
    return model
