"""torch.compile of a backbone's decoder layers (`backbone.compile.enabled=true`, or `auto`:
on a CPU with AMX-BF16 only).

Each decoder layer is compiled on its own with inductor and dynamic shapes: all layers share
the same graphs per grad mode, and the packed row lengths that change every step do not
trigger a recompilation. grouped_bmm attention runs eager between two compiled graphs of each layer
(its query-block loop would specialise on the length). A forward with a KV cache
specialises every layer on its cache slot, so training and scoring forwards pass
use_cache=False; generate evaluation, which needs the cache, compiles a graph per layer.
The embeddings, the attention mask and the LM head stay eager (the head runs on a few rows;
the mask is built once per forward). Inductor fuses the elementwise work around the
matmuls (RMSNorm in float32, rotary embeddings, SiLU gating, residual and LoRA adds; with
sdpa also the attention); the matmuls stay in oneDNN / cuBLAS. Training and evaluation
compile separate graphs (with and without autograd) on first use; inductor's artefacts are
cached on disk (backbone.compile.cache_dir, default paths.cache_dir/inductor), so a later
process reuses them. `compile_seconds` tells how long the process has spent compiling (the
job's metrics.json reports it per stage).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import torch

from eapo_exp.backbones.dtype import cpu_has_amx
from eapo_exp.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


def compile_wanted(enabled, device: torch.device | str) -> bool:
    """`backbone.compile.enabled` (true, false or auto) on `device`. `auto` compiles on a CPU
    with AMX-BF16 only: there a cold compile paid for itself within `make run` (2026-12-06);
    on an AMD EPYC with AVX512-BF16 the compiled run was 3% slower, and on a GPU compiling
    paid only from ~128 prompts per step (docs/results/compile_auto_2026-12-06,
    docs/results/gpu_h200_2026-12-04)."""
    enabled = compile_setting(enabled)
    if enabled == "auto":
        return torch.device(device).type == "cpu" and cpu_has_amx()
    return enabled


def resolve_auto_compile(cfg, device: torch.device | str) -> bool:
    """Replace backbone.compile.enabled=auto in a job's config by what it means on `device`,
    so the artifact fingerprints and the job's resolved config say whether the layers ran
    compiled (their numbers differ by bf16 rounding). True when it replaced `auto`."""
    if compile_setting(cfg.backbone.compile.enabled) != "auto":
        return False
    cfg.backbone.compile.enabled = compile_wanted("auto", device)
    kind = torch.device(device).type
    log.info("backbone.compile.enabled=auto -> %s (%s)", cfg.backbone.compile.enabled,
             "a CPU with AMX-BF16" if cfg.backbone.compile.enabled
             else "a CPU without AMX-BF16" if kind == "cpu" else f"{kind}: opt-in there")
    return True


def compile_setting(enabled) -> bool | str:
    """True, False or "auto"; any other value of backbone.compile.enabled raises ConfigError."""
    if isinstance(enabled, bool):
        return enabled
    if isinstance(enabled, str) and enabled.strip().lower() == "auto":
        return "auto"
    raise ConfigError(f"backbone.compile.enabled must be true, false or auto, got {enabled!r}")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (model.model.layers for Llama-like models)."""
    inner = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ModelError(f"backbone.compile.enabled=true: cannot find the decoder layers of "
                         f"{type(model).__name__} (expected model.model.layers)")
    return layers


def compile_decoder_layers(model, cache_dir: str | os.PathLike | None = None) -> int:
    """Compile every decoder layer of `model` in place (lazily: the first forward with and
    the first without autograd compile: ~45 s and ~15 s for SmolLM2 on 2 CPU cores with a
    cold cache);
    returns the number of layers compiled (0 on a CPU without a C++ compiler: eager)."""
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # Read by inductor at every cache access (an earlier default does not stick).
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).resolve())
    layers = decoder_layers(model)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and cpp_compiler() is None:
        log.warning("backbone.compile.enabled=true: inductor needs a C++ compiler on a CPU and "
                    "none was found (CXX, c++, g++, clang++ on PATH); running eager")
        return 0
    # Graphs per grad mode and, with a KV cache, per layer: all from the one code object.
    # Below this limit dynamo would silently run the remaining layers eager.
    limit = 8 * len(layers)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 4 * limit)
    for layer in layers:
        layer.compile(dynamic=True)
    # Frozen embeddings hand the first layer an input that needs no grad, which would give
    # that layer training graphs of its own (forward and backward: a third of a cold
    # compile). An input that requires grad lets every layer share one pair; the cost is the
    # first layer's input gradient, about 1/60 of a backward. Without autograd it stays as
    # it is, like every other layer's input there.
    if hasattr(model, "get_input_embeddings"):
        model.get_input_embeddings().register_forward_hook(_input_requires_grad)
    log.info("torch.compile: %d decoder layers of %s (inductor, dynamic shapes; cache %s)",
             len(layers), type(model).__name__, os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
    return len(layers)


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would build CPU kernels with (CXX, else c++ / g++ / clang++
    on PATH), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _input_requires_grad(module, inputs, output: torch.Tensor) -> None:
    if torch.is_grad_enabled() and not output.requires_grad:
        output.requires_grad_(True)


def compile_seconds() -> float:
    """Seconds this process has spent in torch.compile so far: dynamo's tracing and inductor's
    code generation and C++ compilation of forward and backward graphs (or their loading from
    a warm artefact cache). 0.0 when nothing was compiled."""
    utils = sys.modules.get("torch._dynamo.utils")  # never imported: nothing compiled
    if utils is None:
        return 0.0
    return float(utils.calculate_time_spent().get("total_wall_time", 0.0))
