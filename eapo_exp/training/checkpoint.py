"""Resumable training checkpoints: LoRA adapter, optimizer, scheduler, RNG, extra state.

A checkpoint is a directory `step-<N>` written to a temporary name and renamed, so a run
killed mid-save leaves the previous checkpoint intact. Only the newest `keep` survive.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def latest_checkpoint(directory: Path) -> Path | None:
    directory = Path(directory)
    if not directory.exists():
        return None
    steps = [(int(m.group(1)), p) for p in directory.iterdir()
             if (m := STEP_DIR.match(p.name)) and (p / "trainer_state.pt").exists()]
    return max(steps)[1] if steps else None


def save_checkpoint(directory: Path, step: int, model, optimizer, scheduler,
                    extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write checkpoint `step` under `directory`; `model` is a peft model (adapter only)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step}"
    tmp = directory / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp / "adapter"))
    torch.save({"step": step, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(), "extra": extra or {}}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    old = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_DIR.match(p.name)))
    for _, path in old[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    log.info("checkpoint saved: %s", final)
    return final


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(Path(checkpoint) / "trainer_state.pt", weights_only=False)


def load_adapter_weights(model, checkpoint: Path) -> None:
    """Copy the adapter weights saved in `checkpoint` into an already-wrapped peft model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = Path(checkpoint) / "adapter"
    weights = adapter_dir / "adapter_model.safetensors"
    state = load_file(str(weights)) if weights.exists() else torch.load(
        adapter_dir / "adapter_model.bin", weights_only=True)
    set_peft_model_state_dict(model, state)

