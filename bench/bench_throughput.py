"""Training and scoring speed against the machine's own matmul peak.

Model: a random-init model of SmolLM2-135M's shape in the dtype the pipeline picks here
(bf16 on a CPU with native bf16 matmuls or a GPU), LoRA r=8 on q/k/v/o. Workloads, 4 ML-100K-
sized prompts of 330-350 tokens:
- sft: prompt + a 12-16-token title per row (left-padded, loss on the title), forward +
  backward, as eapo_exp.training.sft does;
- preference K=1 / K=3: one shared-prompt pass over chosen + K rejected titles, DPO loss
  against fixed reference log-probs, forward + backward;
- score: the 4 prompts x 21 candidate titles, forward only, no grad (score-mode evaluation,
  eval.batch_size=4).
Variants, each in its own process: `eager` (sdpa attention, PEFT's float32 LoRA branch: the
path before the fused kernels), `fast` (attention `auto` = grouped_bmm on a CPU, sdpa on a
GPU; LoRA in the model dtype: the default), `compiled` (fast + torch.compile of the decoder
layers; its first call, which compiles, is reported apart).

Useful FLOPs: 4*N*T for a LoRA training step (forward 2NT + the backward's input gradients
2NT; frozen weights get no weight gradient), 2*N*T forward only, N = the decoder layers'
weights (every token passes through them; the head runs on a few rows), T = real tokens
(each prompt once plus every completion). The peak is a bf16 matmul of the model's own
shapes (tokens x 576 @ 576 x 1536, and 576 x 576) measured in the same run; each step's
TFLOP/s is given as a share of it. On a GPU the same figure is its MFU against the measured
matmul peak.

    python -m bench throughput
    EAPO_BENCH_VARIANTS=eager,fast EAPO_BENCH_REPEATS=5 python -m bench throughput
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time

import numpy as np
import torch

PROMPTS = 4
PROMPT_TOKENS = (330, 350)
TITLE_TOKENS = (12, 16)
CANDIDATES = 21
REPEATS = int(os.environ.get("EAPO_BENCH_REPEATS", "3"))
VARIANTS = {
    "eager": {"attn": "sdpa", "lora": "float32", "compile": False},
    "fast": {"attn": "auto", "lora": "model", "compile": False},
    "compiled": {"attn": "auto", "lora": "model", "compile": True},
}
WORKLOADS = ("sft", "preference K=1", "preference K=3", "score")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize()
        started = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, tokens: int = PROMPTS * 360) -> tuple[float, str]:
    """Best TFLOP/s of the model's own matmul shapes in `dtype`, and which shape gave it."""
    dev = device()
    best, best_shape = 0.0, ""
    for inner, outer in ((576, 1536), (1536, 576), (576, 576)):
        x = torch.randn(tokens, inner, dtype=dtype, device=dev)
        w = torch.randn(outer, inner, dtype=dtype, device=dev)
        def project(x=x, w=w):
            return torch.nn.functional.linear(x, w)

        timed(project, 3)
        seconds = timed(project, 20)
        tflops = 2 * tokens * inner * outer / seconds / 1e12
        if tflops > best:
            best, best_shape = tflops, f"{tokens}x{inner} @ {inner}x{outer}"
    return best, best_shape


def build(variant: dict):
    from bench.bench_scoring import smollm2_sized_llama
    from eapo_exp.backbones.attention import resolve_attention
    from eapo_exp.backbones.base import contiguous_head_input
    from eapo_exp.backbones.compile import compile_decoder_layers
    from eapo_exp.backbones.dtype import resolve_dtype
    from eapo_exp.backbones.lora import apply_lora

    attn = resolve_attention(variant["attn"], torch.cuda.is_available())
    model, _ = smollm2_sized_llama(attn)
    model = model.to(device=device(), dtype=resolve_dtype("auto"))
    contiguous_head_input(model)
    if variant["compile"]:
        compile_decoder_layers(model, os.environ.get("EAPO_BENCH_INDUCTOR_CACHE",
                                                     ".cache/inductor"))
    return apply_lora(model, r=8, alpha=16, dropout=0.0, compute_dtype=variant["lora"])


def decoder_weights(model) -> int:
    from eapo_exp.backbones.compile import decoder_layers

    layers = decoder_layers(model.get_base_model())
    return sum(p.numel() for p in layers.parameters() if p.dim() == 2)


def make_inputs(seed: int = 0):
    rng = np.random.default_rng(seed)

    def ids(bounds):
        return rng.integers(3, 49152, int(rng.integers(*bounds, endpoint=True))).tolist()

    prompts = [ids(PROMPT_TOKENS) for _ in range(PROMPTS)]
    titles = [[ids(TITLE_TOKENS) + [2] for _ in range(CANDIDATES)] for _ in range(PROMPTS)]
    return prompts, titles


def workloads(model, prompts, titles):
    """name -> (callable, real tokens, FLOPs factor: 4 training, 2 forward only)."""
    from eapo_exp.losses import DPOLoss, PreferenceLogps
    from eapo_exp.losses.sft import response_nll
    from eapo_exp.training.sft import pad_left
    from eapo_exp.training.shared_prefix import completion_logprobs

    dev = device()
    pad = 2

    def sft():
        model.train()
        model.zero_grad(set_to_none=True)
        inputs = [p + t[0] for p, t in zip(prompts, titles)]
        labels = [[-100] * len(p) + t[0] for p, t in zip(prompts, titles)]
        batch = pad_left(inputs, labels, pad, dev)
        keep = batch["logits_to_keep"]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=keep).logits
        response_nll(logits, batch["labels"][:, -keep:]).backward()

    def preference(k: int):
        def step():
            model.train()
            model.zero_grad(set_to_none=True)
            comps = [t[:k + 1] for t in titles]
            logps = completion_logprobs(model, prompts, comps, pad).logprobs.float()
            ref = logps.detach() - 0.1
            batch = PreferenceLogps(policy_chosen=logps[:, 0], policy_rejected=logps[:, 1:],
                                    ref_chosen=ref[:, 0], ref_rejected=ref[:, 1:] + 0.2)
            DPOLoss()(batch, torch.full((PROMPTS, k), 0.1, device=dev)).loss.backward()
        return step

    def score():
        model.eval()
        with torch.no_grad():
            completion_logprobs(model, prompts, titles, pad)

    def tokens(k: int):
        return sum(len(p) + sum(len(t) for t in ts[:k]) for p, ts in zip(prompts, titles))

    return {
        "sft": (sft, tokens(1), 4),
        "preference K=1": (preference(1), tokens(2), 4),
        "preference K=3": (preference(3), tokens(4), 4),
        "score": (score, tokens(CANDIDATES), 2),
    }


def run_variant(name: str, queue) -> None:
    if os.environ.get("EAPO_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["EAPO_BENCH_THREADS"]))
    torch.manual_seed(0)
    model = build(VARIANTS[name])
    weights = decoder_weights(model)
    prompts, titles = make_inputs()
    results = {}
    for workload, (fn, tokens, factor) in workloads(model, prompts, titles).items():
        synchronize()
        started = time.perf_counter()
        fn()  # warm-up; with compile, the compilation
        synchronize()
        first = time.perf_counter() - started
        seconds = timed(fn, REPEATS)
        results[workload] = {"seconds": seconds, "first_s": first,
                             "tflops": factor * weights * tokens / seconds / 1e12,
                             "tokens": tokens}
    queue.put((name, results))


def main() -> dict:
    from eapo_exp.backbones.dtype import resolve_dtype

    if os.environ.get("EAPO_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["EAPO_BENCH_THREADS"]))
    names = [n.strip() for n in os.environ.get("EAPO_BENCH_VARIANTS", ",".join(VARIANTS))
             .split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"EAPO_BENCH_VARIANTS: unknown {unknown}; choose from {list(VARIANTS)}")
    dtype = resolve_dtype("auto")
    peak, shape = matmul_peak(dtype)
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{where}, torch threads {torch.get_num_threads()}, {str(dtype)[6:]}: matmul peak "
          f"{peak:.3f} TFLOP/s ({shape}); {PROMPTS} prompts of {PROMPT_TOKENS[0]}-"
          f"{PROMPT_TOKENS[1]} tokens, titles of {TITLE_TOKENS[0] + 1}-{TITLE_TOKENS[1] + 1}; "
          f"median of {REPEATS}")
    ctx = multiprocessing.get_context("spawn")
    results = {}
    for name in names:
        queue = ctx.Queue()
        process = ctx.Process(target=run_variant, args=(name, queue))
        process.start()
        variant, measured = queue.get()
        process.join()
        results[variant] = measured
    base = results.get("eager")
    print(f"{'workload':16s} {'variant':9s} {'s/step':>7s} {'TFLOP/s':>8s} {'of peak':>8s} "
          f"{'vs eager':>8s} {'first call s':>12s}")
    for workload in WORKLOADS:
        for name in names:
            r = results[name][workload]
            ratio = (f"{base[workload]['seconds'] / r['seconds']:.2f}x" if base else "-")
            print(f"{workload:16s} {name:9s} {r['seconds']:7.2f} {r['tflops']:8.3f} "
                  f"{100 * r['tflops'] / peak:7.1f}% {ratio:>8s} {r['first_s']:12.1f}")
    return {"peak_tflops": peak, "results": results}


if __name__ == "__main__":
    main()
