"""LoRA adapters (PEFT) on a backbone: apply, save, load, merge for inference."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from eapo_exp.backbones import hybrid_items
from eapo_exp.backbones.base import checkpointing_enabled, count_parameters
from eapo_exp.backbones.lora_compute import set_lora_compute_dtype
from eapo_exp.errors import ModelError

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _prepare_for_checkpointing(model) -> None:
    # With reentrant checkpointing and frozen embeddings, no input of a checkpointed block
    # requires grad, so the LoRA weights inside it would get none. This hook fixes that.
    if checkpointing_enabled(model):
        model.enable_input_require_grads()


def apply_lora(model, r: int = 8, alpha: int = 16, dropout: float = 0.05,
               target_modules: Sequence[str] | str = DEFAULT_TARGETS,
               modules_to_save: Sequence[str] = (), compute_dtype: str = "model"):
    """Wrap `model` in a PEFT LoRA model (task CAUSAL_LM); only the adapters are trainable.
    compute_dtype: where the adapter branch runs (lora_compute.set_lora_compute_dtype)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets = target_modules if isinstance(target_modules, str) else list(target_modules)
    config = LoraConfig(r=int(r), lora_alpha=int(alpha), lora_dropout=float(dropout),
                        target_modules=targets, task_type=TaskType.CAUSAL_LM, bias="none",
                        # Fully trained copies of these modules travel with the adapter (the
                        # random-init tiny backbone needs its embeddings and head trained).
                        modules_to_save=list(modules_to_save) or None)
    _prepare_for_checkpointing(model)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        raise ModelError(f"cannot apply LoRA to {type(model).__name__} with target_modules="
                         f"{targets}: {' '.join(str(exc).split())}") from exc
    set_lora_compute_dtype(peft_model, compute_dtype)
    trainable, total = count_parameters(peft_model)
    log.info("LoRA r=%d alpha=%d on %s: %d trainable of %d parameters (%.2f%%)", r, alpha,
             targets, trainable, total, 100.0 * trainable / max(total, 1))
    return peft_model


def save_adapter(peft_model, path: str | os.PathLike) -> Path:
    """Write the adapter weights + adapter_config.json to `path` (the base model is not saved)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(path), safe_serialization=True)
    hybrid_items.write_shapes(peft_model, path)
    return path


def load_adapter(model, path: str | os.PathLike, trainable: bool = False,
                 compute_dtype: str = "model"):
    """Put the adapter saved at `path` on `model`; `trainable` keeps its weights trainable."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"no LoRA adapter at {path} (adapter_config.json missing)")
    hybrid_items.rebuild(model, path)
    if trainable:
        _prepare_for_checkpointing(model)
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    except Exception as exc:
        raise ModelError(f"cannot load LoRA adapter {path}: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}") from exc
    set_lora_compute_dtype(peft_model, compute_dtype)
    return peft_model


def merge_for_inference(peft_model):
    """The base model with the adapter folded into its weights (W + s·B·A), for forward-only
    passes: every adapted layer then runs one matmul instead of three plus a scale and an
    add. Trained copies of modules_to_save (embeddings, head, a hybrid item projector)
    replace the originals. Merging in a bf16 model rounds W + s·B·A to bf16, so scores move
    by bf16 rounding; a float32 model merges exactly up to float32 rounding."""
    had_projector = hybrid_items.find_projector(peft_model) is not None
    merged = peft_model.merge_and_unload()
    if had_projector and hybrid_items.find_projector(merged) is None:
        raise ModelError("merging the LoRA adapter dropped the hybrid item projector")
    log.info("LoRA adapter merged into the weights for inference")
    return merged
