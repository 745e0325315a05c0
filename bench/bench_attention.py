"""One decoder layer's attention, implementation against implementation, on SmolLM2's shapes.

Which attention a CPU should run (`backbone.loader.attn_implementation=auto` picks
grouped_bmm there) depends on the CPU: torch's scaled_dot_product_attention runs its flash
kernel on a CPU whenever there is a mask, and that kernel's matmuls are oneDNN brgemm calls,
which use AMX tiles where the CPU has them, while grouped_bmm's are batched matmuls over the
64-wide heads. This bench times the two as a model layer calls them (through transformers'
attention interface, a module with 3 query heads per key head), on the three packed layouts
of a run:
- sft: 4 left-padded rows of prompt + title (causal with padding), forward + backward;
- preference K=3: 4 shared-prompt rows, each prompt followed by 4 titles, forward + backward;
- score: 4 shared-prompt rows of a prompt and 21 titles, forward only (no grad).
Prompts of 330-350 tokens and titles of 13-17, as `python -m bench throughput`; each layout
gets the mask its implementation is handed in a run (an additive bias for grouped_bmm, a bool
mask for sdpa). Every round draws new lengths and runs the variants in a rotating order,
`CALLS` calls each; medians over all calls. The last column is the largest difference of a
variant's output from grouped_bmm's (bf16 rounding only, or the two disagree).

    python -m bench attention
    EAPO_BENCH_ATTENTION=grouped_bmm,sdpa EAPO_BENCH_REPEATS=3 python -m bench attention
"""

from __future__ import annotations

import os
import statistics

import numpy as np
import torch

from bench.bench_throughput import REPEATS, make_inputs, timed_once

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30
CALLS = 5
VARIANTS = ("grouped_bmm", "sdpa")
# layout -> (titles after each prompt, timed with a backward)
WORKLOADS = {"sft": (1, True), "preference K=3": (4, True), "score": (21, False)}


class _Layer(torch.nn.Module):
    """What an attention function reads from the calling layer."""

    def __init__(self) -> None:
        super().__init__()
        self.num_key_value_groups = HEADS // KV_HEADS
        self.is_causal = True


def segments(workload: str, seed: int) -> np.ndarray:
    """[B, T] segment ids of a packed batch: -1 pad, 0 prompt, k + 1 title k. SFT rows are
    prompt + first title, left-padded, all one causal segment."""
    titles, _ = WORKLOADS[workload]
    prompts, candidates = make_inputs(seed)
    if workload == "sft":
        rows = [len(p) + len(c[0]) for p, c in zip(prompts, candidates)]
        seg = np.full((len(rows), max(rows)), -1)
        for b, length in enumerate(rows):
            seg[b, seg.shape[1] - length:] = 0
        return seg
    plen = max(len(p) for p in prompts)
    ctot = max(sum(len(t) for t in c[:titles]) for c in candidates)
    seg = np.full((len(prompts), plen + ctot), -1)
    for b, (prompt, comps) in enumerate(zip(prompts, candidates)):
        seg[b, plen - len(prompt):plen] = 0
        start = plen
        for k, comp in enumerate(comps[:titles]):
            seg[b, start:start + len(comp)] = k + 1
            start += len(comp)
    return seg


def make_call(name: str, seg: np.ndarray, grad: bool, dtype: torch.dtype, seed: int):
    """A zero-argument call of attention `name` over q, k, v drawn from `seed` for the layout
    `seg` (with grad: forward + backward of a fixed output gradient), and its forward output."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from eapo_exp.backbones.attention import register
    from eapo_exp.training.shared_prefix import _attention_mask

    register()
    if name not in ALL_ATTENTION_FUNCTIONS:
        raise SystemExit(f"EAPO_BENCH_ATTENTION: unknown attention {name!r}; choose from "
                         f"{sorted(ALL_ATTENTION_FUNCTIONS.valid_keys())}")
    attend = ALL_ATTENTION_FUNCTIONS[name]
    bsz, total = seg.shape
    generator = torch.Generator().manual_seed(seed)

    def tensor(heads):
        return torch.randn(bsz, heads, total, HEAD_DIM, generator=generator).to(dtype)

    query, key, value = tensor(HEADS), tensor(KV_HEADS), tensor(KV_HEADS)
    grad_out = torch.randn(bsz, total, HEADS, HEAD_DIM, generator=generator).to(dtype)
    mask = _attention_mask(name, torch.from_numpy(seg), dtype)
    layer = _Layer()
    leaves = [t.requires_grad_(grad) for t in (query, key, value)]

    def call():
        with torch.set_grad_enabled(grad):
            out, _ = attend(layer, *leaves, mask, scaling=HEAD_DIM ** -0.5, dropout=0.0)
            if grad:
                torch.autograd.backward(out, grad_out)
                for leaf in leaves:
                    leaf.grad = None
        return out

    with torch.no_grad():
        reference, _ = attend(layer, *leaves, mask, scaling=HEAD_DIM ** -0.5, dropout=0.0)
    return call, reference.float()


def main() -> dict:
    from eapo_exp.backbones.dtype import resolve_dtype

    names = [n.strip() for n in os.environ.get("EAPO_BENCH_ATTENTION", ",".join(VARIANTS))
             .split(",") if n.strip()]
    if not names or names[0] != "grouped_bmm":
        names = ["grouped_bmm"] + [n for n in names if n != "grouped_bmm"]
    dtype = resolve_dtype("auto")
    print(f"CPU, torch threads {torch.get_num_threads()}, {str(dtype)[6:]}; one layer's "
          f"attention, {HEADS} query / {KV_HEADS} key heads of {HEAD_DIM}; medians of "
          f"{REPEATS} rounds x {CALLS} calls, new lengths each round")
    print(f"{'workload':16s} {'variant':12s} {'columns':>7s} {'ms/layer':>9s} "
          f"{'x30 layers s':>12s} {'vs grouped_bmm':>14s} {'max |diff|':>10s}")
    results: dict = {}
    for workload, (_, grad) in WORKLOADS.items():
        seconds = {n: [] for n in names}
        diffs = {n: [] for n in names}  # np.max of these keeps a NaN (Python's max drops it)
        columns = []
        for round_ in range(REPEATS):
            seg = segments(workload, seed=round_ + 1)
            columns.append(seg.shape[1])
            calls = {}
            for name in names:
                calls[name], out = make_call(name, seg, grad, dtype, seed=round_)
                if name == names[0]:
                    reference = out
                diffs[name].append(float((out - reference).abs().max()))
            for name in names:
                calls[name]()  # warm-up: allocator, oneDNN primitives
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for _ in range(CALLS):
                for name in order:
                    seconds[name].append(timed_once(calls[name]))
        base = statistics.median(seconds[names[0]])
        results[workload] = {}
        for name in names:
            median = statistics.median(seconds[name])
            results[workload][name] = {"seconds": median,
                                       "max_abs_diff": float(np.max(diffs[name]))}
            print(f"{workload:16s} {name:12s} {int(statistics.median(columns)):7d} "
                  f"{1e3 * median:9.2f} {LAYERS * median:12.2f} {base / median:13.2f}x "
                  f"{results[workload][name]['max_abs_diff']:10.4f}")
    return results


if __name__ == "__main__":
    main()
