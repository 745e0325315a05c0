"""On a CUDA machine (bench/gpu_check.sh runs these): every forward of a whole job (expert,
SFT, reference log-probs, preference, evaluation) runs with its parameters and inputs on
the GPU. Skipped where CUDA is absent."""

from __future__ import annotations

import pytest
import torch

from eapo_exp.pipeline import run_stages
from eapo_exp.tracking import RunTracker

pytestmark = pytest.mark.gpu


def tensors_in(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from tensors_in(item)


@pytest.fixture
def forwards_on_cuda():
    """Counts module forwards; records any whose parameters or tensor inputs are off cuda."""
    seen = {"forwards": 0, "off_cuda": []}

    def check(module, args):
        seen["forwards"] += 1
        for name, param in module.named_parameters(recurse=False):
            if param.device.type != "cuda":
                seen["off_cuda"].append(f"{type(module).__name__}.{name} on {param.device}")
        for tensor in tensors_in(args):  # leaf modules get their inputs positionally
            if tensor.device.type != "cuda":
                seen["off_cuda"].append(f"{type(module).__name__} input on {tensor.device}")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    yield seen
    handle.remove()


@pytest.mark.parametrize("method", ["eapo", "sdpo"])
def test_whole_job_runs_on_cuda(fast_config, tmp_path, forwards_on_cuda, method):
    cfg = fast_config(f"method={method}", "stage=all", "train.preference.max_steps=4",
                      "train.preference.max_train_samples=16", "eval.max_samples=16")
    metrics = run_stages(cfg, RunTracker(tmp_path), tmp_path)
    assert metrics["runtime"]["device"].startswith("cuda")
    assert forwards_on_cuda["forwards"] > 100
    assert not forwards_on_cuda["off_cuda"], sorted(set(forwards_on_cuda["off_cuda"]))[:20]


@pytest.mark.parametrize("mode", ["beam", "generate"])
def test_evaluation_modes_run_on_cuda(fast_config, tmp_path, forwards_on_cuda, mode):
    cfg = fast_config("method=sft", "stage=sft", f"eval={mode}", "eval.max_samples=8",
                      "train.sft.max_train_samples=16", "train.sft.epochs=1")
    metrics = run_stages(cfg, RunTracker(tmp_path), tmp_path)
    assert metrics["eval"]["sft"]["test"]["n"] == 8
    assert not forwards_on_cuda["off_cuda"], sorted(set(forwards_on_cuda["off_cuda"]))[:20]
