"""The same LoRA model eager and with torch.compile'd decoder layers (grouped_bmm
attention): completion log-probs and LoRA gradients of two training batches of different
row lengths, and no-grad scores of a third, with the seconds spent compiling after each
batch and the job's stage timer around each model. Saves both to <out>/results.pt. Runs in its own
process: compilation leaves process-wide state (dynamo caches, inductor worker threads)
that other tests must not inherit."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eapo_exp.backbones.attention import register
from eapo_exp.backbones.compile import compile_decoder_layers, compile_seconds
from eapo_exp.backbones.lora import apply_lora
from eapo_exp.pipeline import timed
from eapo_exp.training.shared_prefix import completion_logprobs

VOCAB = 97


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, eos_token_id=1,
                         bos_token_id=None)
    config._attn_implementation = register()
    return LlamaForCausalLM(config).eval()


def batch(seed: int):
    gen = torch.Generator().manual_seed(seed)

    def rand(n):
        return torch.randint(2, VOCAB, (n,), generator=gen).tolist()

    # A new row length per seed, across a multiple of the eager attention's 128-query
    # blocks (seed 3: one block, seed 4: two), which must not recompile either.
    prompts = [rand(19 + seed), rand(6), rand(100 + 60 * (seed - 3))]
    completions = [[rand(3), rand(5)], [rand(4), rand(2), rand(6)], [rand(1)]]
    return prompts, completions


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def measure(model) -> dict:
    model.train()
    graphs, compiling = [], []
    for seed in (3, 4):  # two row lengths: dynamic shapes, no recompilation
        model.zero_grad()
        logps = completion_logprobs(model, *batch(seed), 0).logprobs
        logps[torch.isfinite(logps)].sum().backward()
        graphs.append(compiled_graphs())
        compiling.append(compile_seconds())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        scores = completion_logprobs(model, *batch(5), 0).logprobs
    return {"logps": logps.detach(), "grads": grads, "scores": scores,
            "graphs_after_each_batch": graphs, "compile_s_after_each_batch": compiling,
            "graphs_after_scoring": compiled_graphs()}


def main(out: Path) -> None:
    eager = apply_lora(llama(), r=4, alpha=8, dropout=0.0)
    base = llama()
    layers = compile_decoder_layers(base, out / "inductor")
    compiled = apply_lora(base, r=4, alpha=8, dropout=0.0)
    compiled.load_state_dict(eager.state_dict())
    timings: dict = {"timings": {}}
    with timed(timings, "eager"):
        eager_results = measure(eager)
    with timed(timings, "compiled"):
        compiled_results = measure(compiled)
    torch.save({"eager": eager_results, "compiled": compiled_results, "layers": layers,
                "timings": timings["timings"]}, out / "results.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
