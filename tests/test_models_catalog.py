"""The model catalog and ``attnkit models``: every preset builds, and the well-known ones have the
published parameter counts."""

from __future__ import annotations

import re

import pytest

from attnkit.cli import main
from attnkit.models.catalog import MODELS, catalog

PUBLISHED = {  # parameter counts of the reference implementations (Hugging Face, timm); the one place they are
    ("GPT", "gpt2-small"): 124_439_808,  # Hugging Face's GPT-2 small, embeddings tied
    ("GPT", "gpt2-medium"): 354_823_168,
    ("BERT", "bert-base"): 109_482_240,  # Hugging Face's bert-base-uncased
    ("BERT", "minilm-l6"): 22_713_216,
    ("ViT", "vit-b/16"): 86_567_656,  # timm's, 1000 classes
    ("ViT", "vit-s/16"): 22_050_664,  # timm's, 1000 classes
}


def test_every_preset_builds_and_known_counts_match():
    counts = {(e.model, e.preset): e.num_parameters for e in catalog()}
    assert len(counts) >= 20 and all(n > 0 for n in counts.values())
    for key, expected in PUBLISHED.items():
        assert counts[key] == expected, key


def test_models_command_prints_the_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "gpt2-small    124.4M" in out and "HybridLM" in out and "vocab_size=32000" in out


PRESETS = {  # the names each model's presets are documented under (README, `attnkit models`)
    "GPTConfig": "gpt2-large, gpt2-medium, gpt2-small, llama-tiny, nano",
    "BERTConfig": "bert-base, bert-large, minilm-l6, tiny",
    "TransformerConfig": "base, big, tiny",
    "ViTConfig": "tiny, vit-b/16, vit-l/16, vit-s/16",
    "HybridConfig": "jamba-tiny, tiny",
    "HANConfig": "tiny, yang2016",
    "RNNSeq2SeqConfig": "bahdanau2014, tiny",
}


@pytest.mark.parametrize("config_cls", list(MODELS.values()), ids=lambda c: c.__name__)
def test_preset_refuses_unknown_names_and_fields(config_cls):
    """``Config.preset`` is one mechanism for every model: an unknown preset is a ValueError naming it and
    listing the presets, an unknown field a TypeError naming it (before any config is built)."""
    known = PRESETS[config_cls.__name__]
    with pytest.raises(ValueError, match=re.escape(f"{config_cls.__name__} has no preset 'huge'; presets: {known}")):
        config_cls.preset("huge")
    with pytest.raises(TypeError, match=f"{config_cls.__name__} has no field\\(s\\) depth"):
        config_cls.preset(known.split(", ")[0], depth=3)
