"""LoRA computed in the base layer's dtype, with float32 weights kept as master copies.

PEFT keeps adapter weights in float32 on a bf16 model and runs the adapter branch in
float32: every LoRA layer casts its [tokens, hidden] input up to float32 (q, k and v each
cast the same input), runs two thin matmuls on it, scales the result, adds it to the bf16
base output in float32 and casts the sum back. On a CPU those casts and elementwise passes
over full activations cost more than the adapter's matmuls (profiled: casts, scaling and
adds around the adapters took ~10% of a SmolLM2 training step). Here the two small adapter matrices are cast to the base dtype once per
forward (the scaling folded into B), the branch runs on the input as it is, and its output
is added in place to the base output:

    y = x W^T + (x A^T) (s B)^T      all in the base dtype

Autograd casts the gradients of A and B back to float32, so the optimizer still updates
float32 weights (bf16 weights would lose small updates). Values differ from PEFT's path
only by bf16 rounding of the adapter branch (bounded in tests/test_fused_kernels.py).
Anything unusual (several adapters, a merged or disabled adapter, mixed-adapter batches,
DoRA or other variants, dropout in training) takes PEFT's own forward.
"""

from __future__ import annotations

import torch

from eapo_exp.errors import ConfigError

COMPUTE_DTYPES = ("model", "float32")


def _plain_lora_path(layer, kwargs: dict):
    """The single active vanilla adapter of `layer`, or None when PEFT's forward is needed."""
    if layer.disable_adapters or layer.merged or kwargs.get("adapter_names") is not None:
        return None
    active = [name for name in layer.active_adapters if name in layer.lora_A]
    if len(active) != 1 or active[0] in getattr(layer, "lora_variant", {}):
        return None
    name = active[0]
    dropout = layer.lora_dropout[name]
    if layer.training and isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
        return None
    return name


def model_dtype_lora_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Forward of a PEFT lora.Linear with the adapter branch in the base layer's dtype."""
    name = _plain_lora_path(layer, kwargs)
    if name is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    lora_a = layer.lora_A[name].weight.to(dtype)
    lora_b = (layer.lora_B[name].weight * layer.scaling[name]).to(dtype)
    update = torch.nn.functional.linear(torch.nn.functional.linear(x.to(dtype), lora_a), lora_b)
    return result.add_(update)


def set_lora_compute_dtype(peft_model, compute_dtype: str) -> int:
    """`model`: route every PEFT lora.Linear of `peft_model` through model_dtype_lora_forward;
    `float32`: PEFT's own forward. Returns how many layers use model_dtype_lora_forward.
    Weights, state dicts and saved adapters are the same either way."""
    from peft.tuners.lora import Linear as LoraLinear

    if compute_dtype not in COMPUTE_DTYPES:
        raise ConfigError(f"backbone.lora.compute_dtype={compute_dtype!r}: choose one of "
                          f"{', '.join(COMPUTE_DTYPES)}")
    changed = 0
    for module in peft_model.modules():
        if type(module) is LoraLinear:
            if compute_dtype == "model":
                module.forward = model_dtype_lora_forward.__get__(module)
                changed += 1
            else:
                module.__dict__.pop("forward", None)
    return changed
