"""docs/configuration.md is generated from the configs' field descriptions and must be current."""

from __future__ import annotations

from pathlib import Path

from mogu.cli.config_docs import configuration_reference
from mogu.engine.settings import EngineConfig
from mogu.model.config import DecodingConfig
from mogu.serve.settings import ServeConfig
from mogu.train.config import TrainConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text(encoding="utf-8") == configuration_reference(), (
        "docs/configuration.md is stale: run `mogu config --markdown > docs/configuration.md`")


def test_every_setting_is_described():
    def undescribed(model, prefix=""):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from undescribed(annotation, f"{prefix}{name}.")
            elif not field.description:
                yield prefix + name

    missing = [*undescribed(TrainConfig), *undescribed(DecodingConfig), *undescribed(ServeConfig), *undescribed(EngineConfig)]
    assert not missing, f"fields without a description: {missing}"
