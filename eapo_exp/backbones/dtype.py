"""Pick the torch dtype for a backbone's weights.

`auto` means bfloat16 on a CUDA device that supports it, and on a CPU only when the CPU
does bfloat16 matmuls natively (AVX512-BF16 or AMX-BF16); everything else gets float32.
float16 is never chosen automatically: LoRA training in pure fp16 weights overflows without
a grad scaler.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from eapo_exp.errors import ConfigError

log = logging.getLogger(__name__)

_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
CHOICES = ("auto", "float32", "bfloat16", "float16")


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    """True when this CPU has AMX-BF16 tile instructions (Intel Sapphire Rapids and later;
    torch's CPU capability names no AMX level, so the flags decide)."""
    return "amx_bf16" in _cpu_flags()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX-BF16)."""
    capability = ""
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # older torch: fall back to /proc/cpuinfo
        capability = ""
    if "BF16" in capability.upper() or "AMX" in capability.upper():
        return True
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})  # not Linux: False, the safe side


def auto_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """What `auto` resolves to on `device` (default: CUDA if available, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if kind == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


def resolve_dtype(name: str | torch.dtype, device: str | torch.device | None = None
                  ) -> torch.dtype:
    """'auto' | 'float32' | 'bfloat16' | 'float16' (or a torch.dtype) -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower().removeprefix("torch.")
    if key == "auto":
        dtype = auto_dtype(device)
        log.info("dtype auto -> %s", str(dtype).removeprefix("torch."))
        return dtype
    if key not in _NAMES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of {', '.join(CHOICES)}")
    return _NAMES[key]
