"""Shared fixtures: compose the real Hydra config with small, fast overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eapo_exp.config import register_configs

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()

# Synthetic data + tiny backbone, sized so a whole SFT/preference job takes seconds.
FAST = [
    "dataset=synthetic", "dataset.source.num_users=120", "dataset.source.num_items=60",
    "dataset.history_len=5", "backbone=tiny", "train=smoke", "logger=none",
    "eval.max_samples=40", "eval.batch_size=8", "expert.max_epochs=5",
]


def compose_config(overrides=()):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("config", overrides=list(overrides))


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` where no CUDA device is visible (`pytest -m gpu` selects them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fast_config(tmp_path):
    def make(*overrides, cache: Path | None = None):
        cache = cache or tmp_path / "cache"
        return compose_config([*FAST, f"paths.cache_dir={cache}", *overrides])

    return make


def byte_bpe_tokenizer(corpus, vocab_size: int = 600):
    """A GPT-2-style byte-level BPE tokenizer trained offline on `corpus` (<pad>, <eos>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="session")
def smollm2_copy(tmp_path_factory) -> Path:
    """The packaged SmolLM2-135M-Instruct as a local model directory: converted from its GGUF
    once per session (~5 s), or reused from $EAPO_MODEL_CACHE."""
    from eapo_exp.backbones.smollm2 import ensure_converted

    cache = os.environ.get("EAPO_MODEL_CACHE") or str(tmp_path_factory.mktemp("smollm2_cache"))
    return ensure_converted(cache)
