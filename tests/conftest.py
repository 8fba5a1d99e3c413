"""Tiny random-weight models per architecture, saved as real model folders (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

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

# Tiny models run fastest on one thread (and a second thread only spins when the other
# core is busy); the integration test on the real model restores the default.
DEFAULT_THREADS = torch.get_num_threads()
torch.set_num_threads(1)

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


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """One saved model folder per architecture, built once per test session."""
    dirs = {}
    for model_type in ARCHITECTURES:
        path = tmp_path_factory.mktemp(f"tiny-{model_type}")
        build_model(model_type, len(tiny_tokenizer)).save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
        dirs[model_type] = path
    return dirs


@pytest.fixture(params=list(ARCHITECTURES))
def arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_dir(tiny_model_dirs, arch) -> Path:
    return tiny_model_dirs[arch]


@pytest.fixture
def llama_dir(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]
