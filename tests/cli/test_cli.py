"""The command line, called as a user would (typer's runner on the real app)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mogu.cli import app
from mogu.train.config import SynthesisConfig

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("info", "generate", "chat"):
        assert command in result.output


def test_info_reports_targets_and_parameter_counts(llama_dir):
    result = invoke("info", str(llama_dir), "--dtype", "float32")
    assert result.exit_code == 0, result.output
    assert "routed layers  0 1 (self_attn.o_proj)" in result.output
    assert "paper" in result.output and "linear" in result.output
    # the tiny llama routes 2 layers of width 32: a reader of 2 x 32 inputs, two scorers with a bias each
    assert "first decision one reader, 130 parameters" in result.output


def test_info_on_a_missing_model_fails_cleanly(tmp_path):
    result = invoke("info", str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert "no such folder" in result.output


def test_help_lists_the_choices_of_mode():
    result = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "<base|glad|unwill|mogu|fixed>" in result.output


def test_data_build_cuts_responses_as_training_does(llama_dir, tmp_path, monkeypatch):
    cut = {}

    def build(_model, _records, _out, max_response_tokens, batch_size):
        cut["tokens"] = max_response_tokens
        return []

    monkeypatch.setattr("mogu.train.data.build_dataset", build)
    result = invoke("data", "build", "-o", str(tmp_path / "data.jsonl"), "--base", str(llama_dir))
    assert result.exit_code == 0, result.output
    assert cut["tokens"] == SynthesisConfig().max_response_tokens


def test_generate_prompts(llama_dir):
    result = invoke("generate", str(llama_dir), "Hello", "How do I bake bread?", "--max-new-tokens", "5", "--show-gates")
    assert result.exit_code == 0, result.output
    assert "router weights" in result.output


def test_generate_rejects_bad_sampling_values(llama_dir):
    result = invoke("generate", str(llama_dir), "Hello", "--top-p", "0")
    assert result.exit_code == 2
    assert "--top-p" in result.output


def test_generate_file_resumes(llama_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps({"id": f"p{i}", "prompt": f"Question {i}?"}) for i in range(5)) + "\n")
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "p1", "response": "kept"}) + "\n" + '{"id": "p2", "resp')  # torn last line
    result = invoke("generate", str(llama_dir), "--input", str(source), "--output", str(out), "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["p0", "p1", "p2", "p3", "p4"]
    assert next(r for r in records if r["id"] == "p1")["response"] == "kept"


def test_generate_file_errors_name_file_line_and_field(llama_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": 3}\n')
    result = invoke("generate", str(llama_dir), "--input", str(source))
    assert result.exit_code == 2
    assert f"{source}:2: field 'prompt' must be str" in result.output


def test_chat_streams_turns(llama_dir):
    result = invoke("chat", str(llama_dir), "--max-new-tokens", "4", "--show-gates", input="Hi\nAnd again?\n\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("router weights") == 2


def test_config_prints_every_field_with_the_file_merged_over_the_defaults(tmp_path):
    from mogu.train.config import TrainConfig

    path = tmp_path / "c.toml"
    path.write_text("routed_tokens = 7\n[router_stage]\nalpha = 3.0\n")
    result = invoke("config", "--config", str(path))
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["routed_tokens"] == 7 and printed["router_stage"]["alpha"] == 3.0
    assert printed == {**TrainConfig().model_dump(mode="json"), "routed_tokens": 7,
                       "router_stage": {**TrainConfig().router_stage.model_dump(mode="json"), "alpha": 3.0}}
    path.write_text("routed_tokens = 0\n")
    result = invoke("config", "--config", str(path))
    assert result.exit_code != 0 and "routed_tokens" in result.output


def test_config_prints_each_preset_resolved():
    paper = json.loads(runner.invoke(app, ["config", "--preset", "paper"]).output)
    default = json.loads(runner.invoke(app, ["config"]).output)
    assert (paper["select_layers"], paper["routed_tokens"], paper["router"]["shape"]) == (None, 5, "paper")
    assert (paper["router"]["reads"], paper["router"]["prompt"], paper["router"]["first"]) == ("own", "routed", "routers")
    assert (paper["router_stage"]["gate_loss"], paper["calibration"]["shifts"]) == ("mse", [])
    assert paper["glad"]["max_examples"] == default["glad"]["max_examples"] == 96  # a section keeps its own defaults
    assert (default["select_layers"], default["routed_tokens"], default["router"]["first"]) == (6, 12, "reader")
    result = runner.invoke(app, ["config", "--preset", "nope"])
    assert result.exit_code == 2 and "unknown preset 'nope'" in result.output


def test_train_takes_the_operating_point():
    from mogu.train.config import load_train_config

    config = load_train_config(None, "default", calibration={"max_benign_refusal": 0.02})
    assert config.calibration.max_benign_refusal == 0.02 and config.calibration.shifts == [0.5]
