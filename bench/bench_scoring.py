"""Shared-prefix vs naive candidate scoring on a SmolLM2-135M-sized model.

21 candidates per sample, ~250-token prompts, 10-15-token completions (title + EOS), fp32.
Checks that both give the same log-likelihoods (within 1e-4) and rankings, and prints the
speed ratio (target >= 4x).

Model: the packaged SmolLM2-135M when EAPO_BENCH_REAL=1 and eapo_exp.backbones.smollm2
loads; otherwise a random-init Llama with SmolLM2-135M's architecture built from a config
(no download). Token ids are random: speed and agreement do not depend on the text.
Environment knobs: EAPO_BENCH_SAMPLES (default 3), EAPO_BENCH_ATTN (sdpa | eager),
EAPO_BENCH_THREADS (torch threads; default torch's). On a loaded 2-core machine, 2 threads
spend most of their time in OpenMP barriers (every small op waits for a descheduled
thread), which hurts the shared pass (many small ops) far more than the naive one: set
EAPO_BENCH_THREADS=1 there for a meaningful ratio.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from eapo_exp.training.shared_prefix import completion_logprobs, naive_completion_logprobs

NUM_CANDIDATES = 21
PROMPT_TOKENS = (240, 260)
COMPLETION_TOKENS = (10, 15)
TOLERANCE = 1e-4
TARGET_RATIO = 4.0


def smollm2_sized_llama(attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return LlamaForCausalLM(config).float().eval(), "random-init SmolLM2-135M architecture"


def load_model(attn: str):
    if os.environ.get("EAPO_BENCH_REAL") == "1":
        try:
            from eapo_exp.backbones.smollm2 import SmolLM2Backbone

            loaded = SmolLM2Backbone(cache_dir=os.environ.get("EAPO_MODEL_CACHE", ".cache/models")).load()
            model = loaded.model.float().eval()
            model.config._attn_implementation = attn
            return model, f"{loaded.name} (packaged weights)"
        except Exception as exc:  # noqa: BLE001 - fall back to the random-init copy
            print(f"real SmolLM2 unavailable ({type(exc).__name__}: {exc}); using random init")
    return smollm2_sized_llama(attn)


def synthetic_batch(rng: np.random.Generator, vocab: int, eos: int):
    prompt = rng.integers(3, vocab, rng.integers(*PROMPT_TOKENS, endpoint=True)).tolist()
    comps = [
        rng.integers(3, vocab, rng.integers(COMPLETION_TOKENS[0] - 1, COMPLETION_TOKENS[1]))
        .tolist() + [eos]
        for _ in range(NUM_CANDIDATES)
    ]
    return prompt, comps


@torch.no_grad()  # not a global switch: `python -m bench` runs the training benches after this
def main() -> dict:
    if os.environ.get("EAPO_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["EAPO_BENCH_THREADS"]))
    num_samples = int(os.environ.get("EAPO_BENCH_SAMPLES", "3"))
    attn = os.environ.get("EAPO_BENCH_ATTN", "sdpa")
    start = time.perf_counter()
    model, label = load_model(attn)
    print(f"model: {label}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"attn={model.config._attn_implementation}, threads={torch.get_num_threads()}, "
          f"built in {time.perf_counter() - start:.1f}s")
    vocab = model.config.vocab_size
    eos = int(model.config.eos_token_id if model.config.eos_token_id is not None else 2)
    pad = eos
    rng = np.random.default_rng(0)
    samples = [synthetic_batch(rng, vocab, eos) for _ in range(num_samples)]

    # Warm-up (allocator, kernels), not timed.
    warm_prompt, warm_comps = synthetic_batch(np.random.default_rng(1), vocab, eos)
    completion_logprobs(model, [warm_prompt[:32]], [warm_comps[:3]], pad)
    naive_completion_logprobs(model, [warm_prompt[:32]], [warm_comps[:3]], pad)

    shared_s = naive_s = 0.0
    diffs = []  # np.max of these keeps a NaN (Python's max drops it)
    same_ranking = True
    for i, (prompt, comps) in enumerate(samples):
        t0 = time.perf_counter()
        shared = completion_logprobs(model, [prompt], [comps], pad).logprobs[0]
        t1 = time.perf_counter()
        naive = naive_completion_logprobs(model, [prompt], [comps], pad,
                                          batch_size=NUM_CANDIDATES).logprobs[0]
        t2 = time.perf_counter()
        shared_s += t1 - t0
        naive_s += t2 - t1
        diff = float((shared - naive).abs().max())
        diffs.append(diff)
        order_shared = torch.argsort(shared, descending=True, stable=True)
        order_naive = torch.argsort(naive, descending=True, stable=True)
        same = bool(torch.equal(order_shared, order_naive))
        same_ranking &= same
        tokens_naive = sum(len(prompt) + len(c) for c in comps)
        tokens_shared = len(prompt) + sum(len(c) for c in comps)
        print(f"sample {i}: prompt {len(prompt)} tok, completions {tokens_shared - len(prompt)} "
              f"tok; shared {t1 - t0:.2f}s ({tokens_shared} tok), naive {t2 - t1:.2f}s "
              f"({tokens_naive} tok); max |diff| {diff:.2e}; same ranking {same}")
    ratio = naive_s / shared_s
    max_diff = float(np.max(diffs))
    result = {
        "model": label, "samples": num_samples, "candidates": NUM_CANDIDATES,
        "shared_s_per_sample": shared_s / num_samples, "naive_s_per_sample": naive_s / num_samples,
        "speedup": ratio, "max_abs_diff": max_diff, "same_ranking": same_ranking,
    }
    print(f"shared {shared_s / num_samples:.2f}s/sample, naive {naive_s / num_samples:.2f}"
          f"s/sample -> speedup {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x); "
          f"max |diff| {max_diff:.2e}")
    assert max_diff <= TOLERANCE, f"log-likelihoods differ by {max_diff:.2e} > {TOLERANCE}"
    assert same_ranking, "shared and naive scoring rank the candidates differently"
    if ratio < TARGET_RATIO:
        print(f"WARNING: speedup {ratio:.1f}x is below the {TARGET_RATIO:.0f}x target")
    return result


if __name__ == "__main__":
    main()
