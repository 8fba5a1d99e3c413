"""Bad inputs when loading models and bundles get clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from mogu.model import BundleError, ModelLoadError, MoGUModel, TargetNotFoundError
from tests.support.models import build_model
from tests.support.models import randomize


@pytest.fixture
def bundle(llama_dir, tmp_path):
    path = tmp_path / "bundle"
    randomize(MoGUModel.from_base(str(llama_dir))).save_pretrained(path)
    return path


def test_missing_adapter_file(bundle):
    (bundle / "glad" / "adapter_model.safetensors").unlink()
    with pytest.raises(BundleError, match=r"missing file glad/adapter_model\.safetensors"):
        MoGUModel.from_pretrained(bundle)


def test_missing_adapter_file_without_checksums(bundle):
    (bundle / "unwill" / "adapter_model.safetensors").unlink()
    payload = json.loads((bundle / "mogu_config.json").read_text())
    payload.pop("files")
    (bundle / "mogu_config.json").write_text(json.dumps(payload))
    with pytest.raises(BundleError, match="adapter_model.safetensors"):
        MoGUModel.from_pretrained(bundle)


def test_corrupted_safetensors(bundle):
    router = bundle / "router.safetensors"
    router.write_bytes(router.read_bytes()[:100])
    with pytest.raises(BundleError, match="checksum mismatch"):
        MoGUModel.from_pretrained(bundle)
    payload = json.loads((bundle / "mogu_config.json").read_text())
    payload.pop("files")
    (bundle / "mogu_config.json").write_text(json.dumps(payload))
    with pytest.raises(BundleError, match="router.safetensors"):
        MoGUModel.from_pretrained(bundle)


def test_wrong_base_model(bundle, tiny_tokenizer, tmp_path):
    other = tmp_path / "other-llama"
    build_model("llama", len(tiny_tokenizer), seed=99).save_pretrained(other)
    tiny_tokenizer.save_pretrained(other)
    with pytest.raises(BundleError, match="a different model"):
        MoGUModel.from_pretrained(bundle, base=str(other))


def test_bad_config_names_the_field(bundle):
    payload = json.loads((bundle / "mogu_config.json").read_text())
    payload["config"]["expert"]["r"] = "eight"
    payload.pop("files")
    (bundle / "mogu_config.json").write_text(json.dumps(payload))
    with pytest.raises(BundleError, match=r"written by mogu \S+, which this mogu .* field 'config\.expert\.r'"):
        MoGUModel.from_pretrained(bundle)


def test_a_bundle_written_by_mogu_0_1_loads(bundle):
    # 0.1 bundles saved a hand-over setting ("faithful" by default); the hand-over is always faithful now
    payload = json.loads((bundle / "mogu_config.json").read_text())
    payload["config"]["handover"] = "faithful"
    payload["config"]["mogu_version"] = payload["provenance"]["mogu"] = "0.1.0"
    (bundle / "mogu_config.json").write_text(json.dumps(payload))
    model = MoGUModel.from_pretrained(bundle)
    assert "handover" not in model.config.model_dump()


def test_a_bundle_from_a_newer_version_names_its_version(bundle):
    payload = json.loads((bundle / "mogu_config.json").read_text())
    payload["config"]["some_future_setting"] = 1
    payload["provenance"]["mogu"] = "9.0.0"
    (bundle / "mogu_config.json").write_text(json.dumps(payload))
    with pytest.raises(BundleError, match=r"written by mogu 9\.0\.0.*some_future_setting"):
        MoGUModel.from_pretrained(bundle)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a MoGU bundle"):
        MoGUModel.from_pretrained(tmp_path)


def test_unknown_architecture_with_no_target(tmp_path, tiny_tokenizer):
    """A model whose decoder layers hold no known attention output projection."""
    model = build_model("llama", len(tiny_tokenizer))
    for layer in model.model.layers:
        layer.self_attn.out = layer.self_attn.o_proj
        del layer.self_attn.o_proj
    with pytest.raises(TargetNotFoundError, match="o_proj"):
        MoGUModel.wrap(model, tiny_tokenizer, None)


def test_missing_model_folder(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="no such folder"):
        MoGUModel.from_base(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        MoGUModel.from_base(str(tmp_path))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        MoGUModel.from_base(str(tmp_path / "x.gguf"))
    # a relative path inside an existing folder is a mistyped folder, not a hub id to try
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(ModelLoadError, match="no such folder: runs/nope"):
        MoGUModel.from_base("runs/nope")


def test_a_file_is_not_a_model_folder(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi"}\n')
    with pytest.raises(ModelLoadError, match="prompts.jsonl is a file, not a model folder"):
        MoGUModel.load(prompts)


def test_a_bundle_without_its_config_says_so(bundle):
    (bundle / "mogu_config.json").unlink()
    with pytest.raises(BundleError, match=r"looks like a MoGU bundle .*but has no mogu_config\.json"):
        MoGUModel.load(bundle)


def test_a_crash_while_saving_keeps_the_old_bundle(bundle, llama_dir, monkeypatch):
    before = {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    model = randomize(MoGUModel.from_base(str(llama_dir)), seed=5)

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("mogu.model.bundle_files.save_file", explode)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(bundle)
    assert {p.name: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
    assert [p.name for p in bundle.parent.iterdir()] == ["bundle"]
    MoGUModel.from_pretrained(bundle)


def test_expert_is_an_ordinary_peft_adapter(bundle, llama_dir, tiny_tokenizer):
    from peft import PeftModel

    model = MoGUModel.from_pretrained(bundle)
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), bundle / "glad").eval()
    ids = tiny_tokenizer(["Sure, here is a poem"], return_tensors="pt")
    with torch.no_grad(), model.mode("glad"):
        assert torch.allclose(model(**ids).logits, peft(**ids).logits, atol=1e-5)
    shutil.rmtree(bundle)
