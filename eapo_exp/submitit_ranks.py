"""Several processes for one sweep point under submitit (hydra/launcher=slurm or
submitit_local with `tasks_per_node: N`).

submitit starts the job function once per task but sets only its own SUBMITIT_* / SLURM_*
variables; `accelerate.Accelerator` reads the torch.distributed ones (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). This exports them from submitit's job environment, so
the N tasks of one job form one process group (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os


def export_submitit_ranks() -> bool:
    """Export the task's torch.distributed variables when this process is one of several
    tasks of a submitit job; True if it did. A process started by `accelerate launch` or
    torchrun (RANK already set) and a single-task job are left as they are."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "RANK" in os.environ:
        return False
    import submitit

    if submitit.JobEnvironment().num_tasks < 2:
        return False
    # Every task keeps all of the node's GPUs visible: the model goes to cuda:$LOCAL_RANK
    # (backbones/hf.py), as under `accelerate launch`.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True
