"""A small random-init Llama with a byte-level BPE tokenizer trained on the run's own text.

For tests, smoke runs and GPU checks on machines without model weights. The tokenizer is
byte-level, so any text round-trips exactly (no unknown tokens), and it is trained on the
corpus the loader is given (item titles + prompt text), so titles take few tokens.
Everything is deterministic under `seed` and the corpus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from eapo_exp.backbones.attention import resolve_attention
from eapo_exp.backbones.base import LoadedBackbone, prepare_tokenizer
from eapo_exp.errors import ConfigError

log = logging.getLogger(__name__)

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3


def train_tokenizer(corpus: Sequence[str], vocab_size: int):
    """Byte-level BPE trained on `corpus`, wrapped as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(byte_alphabet) + len(SPECIAL_TOKENS):
        raise ConfigError(f"tiny backbone: vocab_size must be at least "
                          f"{len(byte_alphabet) + len(SPECIAL_TOKENS)}, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=byte_alphabet, min_frequency=2,
                                  show_progress=False)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                      pad_token=PAD, unk_token=UNK, padding_side="right",
                                      clean_up_tokenization_spaces=False)
    return wrapped


class TinyBackbone:
    """Random-init `LlamaForCausalLM` (float32) + tokenizer trained on `corpus`."""

    def __init__(self, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                 intermediate_size: int = 128, max_context: int = 1024,
                 vocab_size: int = 2000, seed: int = 0,
                 attn_implementation: str = "auto") -> None:
        if hidden_size % num_heads:
            raise ConfigError(f"tiny backbone: hidden_size {hidden_size} is not divisible "
                              f"by num_heads {num_heads}")
        if (hidden_size // num_heads) % 2:
            raise ConfigError("tiny backbone: hidden_size / num_heads must be even (RoPE)")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.intermediate_size = intermediate_size
        self.max_context = max_context
        self.vocab_size = vocab_size
        self.seed = seed
        self.attn_implementation = attn_implementation

    def load(self, corpus: Sequence[str] = ()) -> LoadedBackbone:
        from transformers import LlamaConfig, LlamaForCausalLM

        started = time.perf_counter()
        texts = [str(text) for text in corpus]
        tokenizer = prepare_tokenizer(train_tokenizer(texts, self.vocab_size), "tiny")
        trained = time.perf_counter()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            max_position_embeddings=self.max_context,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        config._attn_implementation = resolve_attention(self.attn_implementation,
                                                        torch.cuda.is_available())
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG stream alone
            torch.manual_seed(self.seed)
            model = LlamaForCausalLM(config)
        model.eval()
        log.info("tiny backbone: %d-token tokenizer from %d texts in %.2f s, %d params, "
                 "%.2f s total", len(tokenizer), len(texts), trained - started,
                 sum(p.numel() for p in model.parameters()), time.perf_counter() - started)
        return LoadedBackbone(model=model, tokenizer=tokenizer, name="tiny",
                              max_context=self.max_context)
