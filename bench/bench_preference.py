"""Preference step: one shared-prompt pass over [chosen] + K rejected vs the naive
concatenation (K + 1 full prompt+completion sequences, as S-DPO's and TRL's trainers do).

Same random-init model of SmolLM2-135M's architecture with a LoRA adapter, same batch
(2 prompts of ~250 tokens, K = 3, completions of ~15 tokens), forward + backward of the DPO
loss. Checks that both give the same loss and LoRA gradients, prints seconds per step, the
speed ratio (target >= 2.5x) and each variant's peak RSS (measured in its own process).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time

import numpy as np
import torch

PROMPT_TOKENS = (240, 260)
COMPLETION_TOKENS = (12, 18)
K = 3
PROMPTS = 2
REPEATS = int(os.environ.get("EAPO_BENCH_REPEATS", "3"))
TARGET_RATIO = 2.5


def make_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts, completions = [], []
    for _ in range(PROMPTS):
        prompts.append(rng.integers(3, 49152, rng.integers(*PROMPT_TOKENS)).tolist())
        completions.append([rng.integers(3, 49152, rng.integers(*COMPLETION_TOKENS)).tolist()
                            + [2] for _ in range(K + 1)])
    return prompts, completions


def build_model():
    from bench.bench_scoring import smollm2_sized_llama
    from eapo_exp.backbones.base import contiguous_head_input
    from eapo_exp.backbones.lora import apply_lora

    model, _ = smollm2_sized_llama("sdpa")
    contiguous_head_input(model)  # as the pipeline's backbones do
    return apply_lora(model, r=8, alpha=16, dropout=0.0)


def step(model, variant: str, prompts, completions):
    from eapo_exp.losses import DPOLoss, PreferenceLogps
    from eapo_exp.training.shared_prefix import completion_logprobs, naive_completion_logprobs

    compute = completion_logprobs if variant == "shared" else naive_completion_logprobs
    model.zero_grad(set_to_none=True)
    out = compute(model, prompts, completions, 2)
    logps = out.logprobs.float()
    ref = logps.detach() - 0.1  # a fixed reference: the loss and gradients are non-trivial
    batch = PreferenceLogps(policy_chosen=logps[:, 0], policy_rejected=logps[:, 1:],
                            ref_chosen=ref[:, 0], ref_rejected=ref[:, 1:] + 0.2)
    loss = DPOLoss()(batch, torch.full((PROMPTS, K), 0.1)).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.item(), grads


def run_variant(variant: str, queue) -> None:
    torch.manual_seed(0)
    model = build_model()
    prompts, completions = make_batch()
    loss, grads = step(model, variant, prompts, completions)  # warm-up, also the check values
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        step(model, variant, prompts, completions)
        times.append(time.perf_counter() - started)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((variant, loss, grads.numpy(), float(np.median(times)), rss_mb))


def main() -> dict:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    results = {}
    for variant in ("shared", "naive"):
        process = ctx.Process(target=run_variant, args=(variant, queue))
        process.start()
        name, loss, grads, seconds, rss = queue.get()
        process.join()
        results[name] = {"loss": loss, "grads": grads, "seconds": seconds, "rss_mb": rss}
    shared, naive = results["shared"], results["naive"]
    grad_diff = float(np.abs(shared["grads"] - naive["grads"]).max())
    assert abs(shared["loss"] - naive["loss"]) < 1e-5, (shared["loss"], naive["loss"])
    assert grad_diff < 1e-4, grad_diff
    ratio = naive["seconds"] / shared["seconds"]
    print(f"preference step, {PROMPTS} prompts x (1 + K={K}) completions, ~250-token prompts, "
          f"torch threads {torch.get_num_threads()}")
    print(f"  shared prompt : {shared['seconds']:.2f} s/step, peak RSS {shared['rss_mb']:.0f} MB")
    print(f"  naive concat  : {naive['seconds']:.2f} s/step, peak RSS {naive['rss_mb']:.0f} MB")
    print(f"  speed-up {ratio:.2f}x (target >= {TARGET_RATIO}x); |loss diff| "
          f"{abs(shared['loss'] - naive['loss']):.2e}, max |grad diff| {grad_diff:.2e}")
    if ratio < TARGET_RATIO:
        print("  WARNING: below target (a loaded machine distorts this; rerun when idle)")
    return {"ratio": ratio, **{k: {kk: vv for kk, vv in v.items() if kk != "grads"}
                               for k, v in results.items()}}


if __name__ == "__main__":
    main()
