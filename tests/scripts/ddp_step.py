"""One TrainLoop step on the tiny backbone; the main process saves the logged loss and the
gradients the optimizer stepped with. Run directly (1 process) or under
`accelerate launch --multi_gpu --num_processes N` to compare the two."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from eapo_exp.backbones import TinyBackbone
from eapo_exp.backbones.lora import apply_lora
from eapo_exp.distributed import default_runtime, end_processes
from eapo_exp.training.loop import LoopSettings, TrainLoop

GRAD_ACCUM = 4


def micro_batch(step: int, micro: int, vocab: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randint(2, vocab, (3, 12), generator=generator)


def main(out: Path) -> None:
    runtime = default_runtime()
    torch.manual_seed(0)
    loaded = TinyBackbone(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                          seed=0).load(["a b c d e f g h i j k"])
    model = apply_lora(loaded.model, r=4, alpha=8, dropout=0.0)
    vocab = loaded.model.config.vocab_size
    logged: dict = {}
    loop = TrainLoop(model, LoopSettings(total_steps=1, grad_accum=GRAD_ACCUM, lr=1e-2,
                                         max_grad_norm=0.0, warmup_ratio=0.0),
                     out / "checkpoints", on_log=lambda step, stats: logged.update(stats),
                     progress=False, runtime=runtime)
    names = [n for n, p in loop.accelerator.unwrap_model(loop.model).named_parameters()
             if p.requires_grad]
    grads: dict[str, torch.Tensor] = {}
    step_optimizer = loop.optimizer.step

    def record_then_step(*args, **kwargs):
        params = [p for p in loop.accelerator.unwrap_model(loop.model).parameters()
                  if p.requires_grad]
        grads.update({n: p.grad.detach().cpu().clone() for n, p in zip(names, params)})
        return step_optimizer(*args, **kwargs)

    loop.optimizer.step = record_then_step

    def step_loss(step: int, micro: int):
        ids = micro_batch(step, micro, vocab).to(runtime.device)
        out = loop.model(input_ids=ids, labels=ids)
        return out.loss, {"micro_index": float(micro)}

    loop.run(step_loss)
    if runtime.is_main:
        torch.save({"num_processes": runtime.num_processes, "stats": logged, "grads": grads},
                   out / "result.pt")
    end_processes()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
