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
Variants: `eager` (sdpa attention, PEFT's float32 LoRA branch: the path before the fused
kernels), `fast` (attention `auto` = grouped_bmm on a CPU, sdpa on a GPU; LoRA in the model
dtype; scoring with the adapter merged into the weights, eval.merge_lora: the default),
`compiled` (fast + torch.compile of the decoder layers; its first call, which compiles, is
reported apart; every round draws a new batch, so a recompilation for new lengths is
timed). All variants live in one process and take turns, round
by round, each round after a fresh matmul-peak probe: on a shared host the speed of the
same step drifts by 2x within minutes (measured on a 2-core AMX VM), and variants timed one
after the other in separate processes would compare different machines.

Useful FLOPs: 4*N*T for a LoRA training step (forward 2NT + the backward's input gradients
2NT; frozen weights get no weight gradient), 2*N*T forward only, N = the decoder layers'
weights (every token passes through them; the head runs on a few rows), T = real tokens
(each prompt once plus every completion). The peak is a bf16 matmul of the model's own
shapes (tokens x 576 @ 576 x 1536, and 576 x 576) probed before every round; each step's
TFLOP/s is given as a share of the probe just before it. On a GPU whose dense bf16 peak is
known (bench.bench_gpu_preference.PEAK_BF16) an MFU column divides by that datasheet peak too.

    python -m bench throughput
    EAPO_BENCH_VARIANTS=eager,fast EAPO_BENCH_REPEATS=5 python -m bench throughput
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

PROMPTS = 4
PROMPT_TOKENS = (330, 350)
TITLE_TOKENS = (12, 16)
CANDIDATES = 21
REPEATS = int(os.environ.get("EAPO_BENCH_REPEATS", "5"))
VARIANTS = {
    "eager": {"attn": "sdpa", "lora": "float32", "compile": False, "merge": False},
    "fast": {"attn": "auto", "lora": "model", "compile": False, "merge": True},
    "compiled": {"attn": "auto", "lora": "model", "compile": True, "merge": True},
}
WORKLOADS = ("sft", "preference K=1", "preference K=3", "score")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_once(fn, *args) -> float:
    synchronize()
    started = time.perf_counter()
    fn(*args)
    synchronize()
    return time.perf_counter() - started


def matmul_peak(dtype: torch.dtype, tokens: int = PROMPTS * 360) -> tuple[float, str]:
    """Best TFLOP/s of the model's own matmul shapes in `dtype`, and which shape gave it.

    Each shape runs ~0.3 s before it is timed: a CPU's matrix units (AMX) and a GPU's clocks
    need that long to reach their sustained rate, and a short probe reads a fraction of it."""
    dev = device()
    best, best_shape = 0.0, ""
    for inner, outer in ((576, 1536), (1536, 576), (576, 576)):
        x = torch.randn(tokens, inner, dtype=dtype, device=dev)
        w = torch.randn(outer, inner, dtype=dtype, device=dev)

        def project(x=x, w=w):
            return torch.nn.functional.linear(x, w)

        warm_until = time.perf_counter() + 0.3
        while time.perf_counter() < warm_until:
            timed_once(project)
        seconds = statistics.median(timed_once(project) for _ in range(20))
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


def workloads(model, score_model=None):
    """name -> (step(prompts, titles), real tokens(prompts, titles), FLOPs factor: 4
    training, 2 forward only). score_model: the model that scores (a merged copy), `model`
    when None."""
    from eapo_exp.losses import DPOLoss, PreferenceLogps
    from eapo_exp.losses.sft import response_nll
    from eapo_exp.training.sft import pad_left
    from eapo_exp.training.shared_prefix import completion_logprobs

    dev = device()
    pad = 2

    def sft(prompts, titles):
        model.train()
        model.zero_grad(set_to_none=True)
        inputs = [p + t[0] for p, t in zip(prompts, titles)]
        labels = [[-100] * len(p) + t[0] for p, t in zip(prompts, titles)]
        batch = pad_left(inputs, labels, pad, dev)
        keep = batch["logits_to_keep"]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_to_keep=keep,
                       use_cache=False).logits
        response_nll(logits, batch["labels"][:, -keep:]).backward()

    def preference(k: int):
        def step(prompts, titles):
            model.train()
            model.zero_grad(set_to_none=True)
            comps = [t[:k + 1] for t in titles]
            logps = completion_logprobs(model, prompts, comps, pad).logprobs.float()
            ref = logps.detach() - 0.1
            batch = PreferenceLogps(policy_chosen=logps[:, 0], policy_rejected=logps[:, 1:],
                                    ref_chosen=ref[:, 0], ref_rejected=ref[:, 1:] + 0.2)
            DPOLoss()(batch, torch.full((PROMPTS, k), 0.1, device=dev)).loss.backward()
        return step

    scorer = model if score_model is None else score_model

    def score(prompts, titles):
        scorer.eval()
        with torch.no_grad():
            completion_logprobs(scorer, prompts, titles, pad)

    def tokens(k: int):
        def count(prompts, titles):
            return sum(len(p) + sum(len(t) for t in ts[:k]) for p, ts in zip(prompts, titles))
        return count

    return {
        "sft": (sft, tokens(1), 4),
        "preference K=1": (preference(1), tokens(2), 4),
        "preference K=3": (preference(3), tokens(4), 4),
        "score": (score, tokens(CANDIDATES), 2),
    }


def measure(names: list[str], rounds: int) -> tuple[dict, list[float], str]:
    """Every variant's model in this one process; each workload's rounds run the variants
    one after the other (in a rotating order) right after a matmul-peak probe, so a drift of
    the machine's speed (shared hosts, clocks) hits all variants of a round alike. Returns
    {variant: {workload: per-round seconds, first call, tokens, FLOPs}}, the probes' peaks
    and the best probe's shape."""
    from eapo_exp.backbones.dtype import resolve_dtype

    dtype = resolve_dtype("auto")
    # A new batch (new lengths) every round, the same for every variant of the round: a
    # compiled variant pays here for any recompilation a real run's changing lengths cause.
    batches = [make_inputs(seed) for seed in range(rounds + 1)]
    models, runs = {}, {}
    for name in names:
        torch.manual_seed(0)  # the same weights in every variant
        models[name] = build(VARIANTS[name])
        scorer = None
        if VARIANTS[name]["merge"]:
            from eapo_exp.backbones.lora import merge_for_inference

            torch.manual_seed(0)
            scorer = merge_for_inference(build(VARIANTS[name]))
        runs[name] = workloads(models[name], scorer)
    weights = decoder_weights(models[names[0]])
    results = {name: {} for name in names}
    peaks, shape = [], ""
    for workload in WORKLOADS:
        for name in names:
            fn, _, _ = runs[name][workload]
            results[name][workload] = {  # with compile, the first call compiles
                "first_s": timed_once(fn, *batches[0]), "seconds": [], "flops": [],
                "tokens": []}
        for round_ in range(rounds):
            batch = batches[round_ + 1]
            peak, shape = matmul_peak(dtype)
            peaks.append(peak)
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                fn, tokens, factor = runs[name][workload]
                seconds = timed_once(fn, *batch)
                flops = factor * weights * tokens(*batch)
                result = results[name][workload]
                result["seconds"].append(seconds)
                result["flops"].append(flops)
                result["tokens"].append(tokens(*batch))
                result.setdefault("share", []).append(flops / seconds / 1e12 / peak)
    return results, peaks, shape


def main() -> dict:
    from eapo_exp.backbones.dtype import resolve_dtype

    if os.environ.get("EAPO_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["EAPO_BENCH_THREADS"]))
    names = [n.strip() for n in os.environ.get("EAPO_BENCH_VARIANTS", ",".join(VARIANTS))
             .split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"EAPO_BENCH_VARIANTS: unknown {unknown}; choose from {list(VARIANTS)}")
    if REPEATS < 1:
        raise SystemExit(f"EAPO_BENCH_REPEATS={REPEATS}: need at least one round")
    dtype = resolve_dtype("auto")
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results, peaks, shape = measure(names, REPEATS)
    peak = statistics.median(peaks)
    device_peak = None
    if torch.cuda.is_available():
        from bench.bench_gpu_preference import peak_flops

        device_peak = peak_flops(torch.device("cuda"))[1]
    print(f"{where}, torch threads {torch.get_num_threads()}, {str(dtype)[6:]}: matmul peak "
          f"{peak:.3f} TFLOP/s ({shape}; median of {len(peaks)} probes, range "
          f"{min(peaks):.3f}-{max(peaks):.3f}); {PROMPTS} prompts of {PROMPT_TOKENS[0]}-"
          f"{PROMPT_TOKENS[1]} tokens, titles of {TITLE_TOKENS[0] + 1}-{TITLE_TOKENS[1] + 1}; "
          f"medians of {REPEATS} interleaved rounds, a new batch each round")
    print("of peak: the step's TFLOP/s over the probe taken just before it; vs eager: the "
          "median of the rounds' ratios"
          + (f"; MFU: over the device's dense bf16 peak, {device_peak / 1e12:.0f} TFLOP/s"
             if device_peak else ""))
    base = results.get("eager")
    print(f"{'workload':16s} {'variant':9s} {'s/step':>7s} {'TFLOP/s':>8s} {'of peak':>8s} "
          f"{'vs eager':>8s} {'first call s':>12s}" + (f" {'MFU':>6s}" if device_peak else ""))
    for workload in WORKLOADS:
        for name in names:
            r = results[name][workload]
            seconds = statistics.median(r["seconds"])
            ratio = "-"
            if base:
                pairs = zip(base[workload]["seconds"], r["seconds"])
                ratio = f"{statistics.median(e / v for e, v in pairs):.2f}x"
            r.update(median_s=seconds,
                     tflops=statistics.median(f / s / 1e12 for f, s in zip(r["flops"],
                                                                            r["seconds"])),
                     share_of_peak=statistics.median(r["share"]))
            mfu = ""
            if device_peak:
                r["mfu"] = r["tflops"] * 1e12 / device_peak
                mfu = f" {100 * r['mfu']:5.1f}%"
            print(f"{workload:16s} {name:9s} {seconds:7.2f} {r['tflops']:8.3f} "
                  f"{100 * r['share_of_peak']:7.1f}% {ratio:>8s} {r['first_s']:12.1f}{mfu}")
    return {"peak_tflops": peak, "peaks": peaks, "results": results}


if __name__ == "__main__":
    main()
