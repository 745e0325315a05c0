"""Preference-step throughput on a ~1B Llama: tokens/s and MFU (run by bench/gpu_check.sh).

A random-init model with Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads, 8 KV heads,
MLP 8192, vocabulary 128256, tied head; 1.24B parameters) in bfloat16 on the GPU, LoRA r=8 on
q/k/v/o, the shared-prompt forward (eapo_exp.training.shared_prefix) over 8 prompts of
~350 tokens x (chosen + K=3 rejected) completions of ~15 tokens, the DPO loss against fixed
reference log-probs (the pipeline caches them), backward and an AdamW step.

tokens/s counts real tokens (prompt once + every completion; no padding). MFU divides the
model FLOPs of those tokens by the device's dense bf16 peak: LoRA's backward needs input
gradients only (the frozen weights get none), so 4 FLOPs per parameter per token, plus the
attention over the allowed query-key pairs, plus the LM head on the rows that get logits.
Unknown devices print TFLOP/s only.

    python -m bench.bench_gpu_preference                  # CUDA; prints one summary line
    python -m bench.bench_gpu_preference --tiny           # small model, CPU, seconds
    python -m bench.bench_gpu_preference --attn flex_attention
    python -m bench.bench_gpu_preference --compile --prompts 32   # torch.compile'd layers

With --compile the warm-up steps include the compilation; its time is printed apart.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

K = 3
PROMPT_TOKENS = (330, 370)
COMPLETION_TOKENS = (12, 18)

# Dense bf16 tensor-core peak (no sparsity), FLOP/s; first matching substring of the device
# name wins, so the specific names come first.
PEAK_BF16 = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)

LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "tie_word_embeddings": True, "rope_theta": 500000.0}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
        "tie_word_embeddings": True}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gpu_preference")
    parser.add_argument("--tiny", action="store_true",
                        help="small model and batch (runs on CPU in seconds)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "flex_attention", "eager"])
    parser.add_argument("--prompts", type=int, default=None, help="prompts per step (8)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (20)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (3)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoder layers (backbone.compile.enabled)")
    return parser.parse_args(argv)


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    return name, next((peak for key, peak in PEAK_BF16 if key in name), None)


def make_batch(rng: np.random.Generator, prompts: int, vocab: int, prompt_tokens, comp_tokens):
    prompt_ids, completions = [], []
    for _ in range(prompts):
        prompt_ids.append(rng.integers(3, vocab, rng.integers(*prompt_tokens)).tolist())
        completions.append([rng.integers(3, vocab, rng.integers(*comp_tokens)).tolist()
                            for _ in range(K + 1)])
    return prompt_ids, completions


def build_model(shape: dict, attn: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    from eapo_exp.backbones.base import contiguous_head_input
    from eapo_exp.backbones.lora import apply_lora

    config = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    config._attn_implementation = attn
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise in the target dtype: no fp32 copy on the GPU
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    contiguous_head_input(model)  # as the pipeline's backbones do
    return apply_lora(model, r=8, alpha=16, dropout=0.0), config


def step_flops(config, prompts, completions) -> float:
    """Model FLOPs of one LoRA step (forward + input-gradient backward) over real tokens."""
    d, layers = config.hidden_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    per_token = layers * (2 * d * d + 2 * d * kv + 3 * d * config.intermediate_size)
    tokens = pairs = head_rows = 0
    for prompt, comps in zip(prompts, completions):
        p = len(prompt)
        lengths = [len(c) for c in comps]
        tokens += p + sum(lengths)
        pairs += p * (p + 1) // 2 + sum(n * p + n * (n + 1) // 2 for n in lengths)
        head_rows += sum(lengths)
    linear = 2 * per_token * tokens
    attention = 4 * layers * d * pairs  # QK^T and AV over the allowed pairs
    head = 2 * d * config.vocab_size * head_rows
    # Backward: input gradients only, one forward's worth for the matmuls and two for the
    # attention (dQ, dK, dV); the LoRA weight gradients are negligible.
    return 2 * linear + 3 * attention + 2 * head


def train_step(model, optimizer, loss_fn, prompts, completions, ref, beta):
    from eapo_exp.losses import PreferenceLogps
    from eapo_exp.training.shared_prefix import completion_logprobs

    out = completion_logprobs(model, prompts, completions, pad_id=0)
    logps = out.logprobs.float()
    batch = PreferenceLogps(policy_chosen=logps[:, 0], policy_rejected=logps[:, 1:],
                            ref_chosen=ref[:, 0], ref_rejected=ref[:, 1:])
    loss = loss_fn(batch, beta).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args: argparse.Namespace) -> dict:
    from eapo_exp.losses import DPOLoss

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = TINY if args.tiny else LLAMA_1B
    n_prompts = args.prompts or (2 if args.tiny else 8)
    steps = args.steps or (2 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    prompt_tokens, comp_tokens = ((30, 40), (3, 6)) if args.tiny else (PROMPT_TOKENS,
                                                                      COMPLETION_TOKENS)
    model, config = build_model(shape, args.attn, device, dtype)
    if args.compile:
        from eapo_exp.backbones.compile import compile_decoder_layers

        compile_decoder_layers(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = DPOLoss()
    rng = np.random.default_rng(0)
    batches = [make_batch(rng, n_prompts, config.vocab_size, prompt_tokens, comp_tokens)
               for _ in range(steps + warmup)]
    gen = torch.Generator().manual_seed(1)
    ref = (-40 + torch.randn(n_prompts, K + 1, generator=gen)).to(device)
    beta = torch.full((n_prompts, K), 0.1, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    losses, seconds, flops, tokens, warmup_seconds = [], 0.0, 0.0, 0, 0.0
    for index, (prompts, completions) in enumerate(batches):
        synchronize(device)
        started = time.perf_counter()
        loss = train_step(model, optimizer, loss_fn, prompts, completions, ref, beta)
        synchronize(device)
        if index >= warmup:
            seconds += time.perf_counter() - started
            flops += step_flops(config, prompts, completions)
            tokens += sum(len(p) + sum(len(c) for c in comps)
                          for p, comps in zip(prompts, completions))
            losses.append(loss.item())
        else:
            warmup_seconds += time.perf_counter() - started
    name, peak = peak_flops(device)
    result = {
        "device": name, "attn": args.attn, "compiled": args.compile,
        "warmup_steps": warmup, "warmup_seconds": warmup_seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in params), "prompts": n_prompts, "steps": steps,
        "seconds_per_step": seconds / steps, "tokens_per_s": tokens / seconds,
        "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak if peak else None,
        "loss": losses[-1], "finite": all(math.isfinite(x) for x in losses),
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else None),
    }
    report(result)
    return result


def report(r: dict) -> None:
    mfu = f"MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else "MFU n/a (unknown peak)"
    memory = (f", peak memory {r['peak_memory_gib']:.1f} GiB"
              if r["peak_memory_gib"] is not None else "")
    compiled = (f", compiled; {r['warmup_steps']} warm-up steps {r['warmup_seconds']:.1f} s"
                if r["compiled"] else "")
    print(f"preference step on {r['device']} ({r['attn']}{compiled}): "
          f"{r['params'] / 1e6:,.1f}M params, {r['trainable'] / 1e6:.2f}M trainable (LoRA r=8), "
          f"{r['prompts']} prompts x (1 + K={K}) completions, {r['steps']} timed steps{memory}")
    print(f"  {r['seconds_per_step']:.3f} s/step, {r['tokens_per_s']:,.0f} tokens/s, "
          f"{r['tflops']:.1f} TFLOP/s, {mfu}, final loss {r['loss']:.4f}")


def main(argv: list[str] | None = None) -> dict:
    """`python -m bench` calls main() with no arguments: without CUDA that is a skip."""
    args = parse_args([] if argv is None else argv)
    if not args.tiny and not args.device and not torch.cuda.is_available():
        print("no CUDA device: skipped (--tiny runs a small version on the CPU)")
        return {}
    return run(args)


if __name__ == "__main__":
    import sys

    result = main(sys.argv[1:])
    raise SystemExit(0 if not result or result["finite"] else 1)
