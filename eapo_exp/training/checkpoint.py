"""Resumable training checkpoints: LoRA adapter, optimizer, scheduler, RNG, extra state.

A checkpoint is a directory `step-<N>` written to a temporary name and renamed, so a run
killed mid-save leaves the previous checkpoint intact. Only the newest `keep` survive.
The main process writes the adapter and trainer state (identical on every process under
DDP); every process writes its own RNG states (CPU and CUDA) as `rng-<process>.pt`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(directory: Path) -> Path | None:
    directory = Path(directory)
    if not directory.exists():
        return None
    steps = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / "trainer_state.pt").exists()]
    return max(steps)[1] if steps else None


def _no_barrier() -> None:
    pass


def save_checkpoint(directory: Path, step: int, model, optimizer, scheduler,
                    extra: dict[str, Any] | None = None, keep: int = 2, process_index: int = 0,
                    num_processes: int = 1, barrier: Callable[[], None] = _no_barrier) -> Path:
    """Write checkpoint `step` under `directory`; `model` is a peft model (adapter only).
    With several processes every one of them calls this (`barrier` orders their writes)."""
    directory = Path(directory)
    final = directory / f"step-{step}"
    tmp = directory / f".step-{step}.tmp"
    main = process_index == 0
    try:
        if main:
            directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp / "adapter"))
            torch.save({"step": step, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "num_processes": num_processes, "extra": extra or {}},
                       tmp / "trainer_state.pt")
        barrier()
        torch.save(rng_state(), tmp / f"rng-{process_index}.pt")
        barrier()
    except (OSError, RuntimeError):  # a full disk: keep the last complete checkpoint only
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if main:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted((int(m.group(1)), p) for p in directory.iterdir()
                     if (m := STEP_DIR.match(p.name)))
        for _, path in old[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
        log.info("checkpoint saved: %s", final)
    barrier()
    return final


def load_trainer_state(checkpoint: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Optimizer state is mapped onto `device` (where the parameters live)."""
    return torch.load(Path(checkpoint) / "trainer_state.pt", map_location=device,
                      weights_only=False)


def load_rng_state(checkpoint: Path, process_index: int) -> dict[str, Any]:
    """This process's RNG states; a run resumed with more processes than it was saved with
    seeds the extra ones from process 0's states."""
    path = Path(checkpoint) / f"rng-{process_index}.pt"
    if not path.exists():
        log.warning("%s has no RNG state for process %d; using process 0's", checkpoint,
                    process_index)
        path = Path(checkpoint) / "rng-0.pt"
    return torch.load(path, weights_only=False)


def load_adapter_weights(model, checkpoint: Path) -> None:
    """Copy the adapter weights saved in `checkpoint` into an already-wrapped peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(checkpoint) / "adapter"
    weights = adapter_dir / "adapter_model.safetensors"
    state = load_file(str(weights)) if weights.exists() else torch.load(
        adapter_dir / "adapter_model.bin", weights_only=True)
    set_peft_model_state_dict(model, state)

