"""Accelerators: ``accelerate launch`` (runs everywhere) and the CUDA / bf16 path (skipped without a GPU)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from mogu.model.config import DecodingConfig
from mogu.model import MoGUModel
from tests.support.models import batch, randomize
from tests.support.training import tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_bf16_base_mode_is_the_stock_model_and_routers_stay_fp32(llama_dir, tiny_tokenizer):
    model = randomize(MoGUModel.from_base(str(llama_dir), dtype=torch.bfloat16, device="cuda"))
    stock = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16).cuda().eval()
    inputs = {k: v.cuda() for k, v in batch(tiny_tokenizer).items()}
    with torch.no_grad(), model.mode("base"):
        assert torch.equal(model(**inputs).logits, stock(**inputs).logits)
    assert all(p.dtype == torch.float32 for layer in model.layers for p in layer.router.parameters())
    results = model.generate(["Hello there", "How do I bake bread at home?"],
                             DecodingConfig(max_new_tokens=8, return_gates=True))
    for r in results:
        assert r.gates.dtype == torch.float32 and ((r.gates > 0) & (r.gates < 1)).all()


@needs_cuda
def test_pipeline_trains_in_bf16_on_the_gpu(llama_dir, instructions, tmp_path):  # noqa: F811
    from mogu.train.pipeline import train

    out = train(tiny_config(llama_dir, instructions), tmp_path / "bundle")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)
    MoGUModel.from_pretrained(out, device="cuda")


def test_accelerate_launch_runs_the_same_command(llama_dir, instructions, tmp_path):  # noqa: F811
    """Two processes on CPU here (gradients averaged, random-stream states gathered across them); on a GPU
    machine one process trains in bf16."""
    config = tmp_path / "train.json"
    cfg = tiny_config(llama_dir, instructions).model_dump(mode="json")
    config.write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1" if torch.cuda.is_available() else "2",
         *(["--mixed_precision", "bf16"] if torch.cuda.is_available() else ["--cpu"]),
         "-m", "mogu", "train", "--config", str(config), "--out", str(tmp_path / "b")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "b" / "mogu_config.json").is_file()
