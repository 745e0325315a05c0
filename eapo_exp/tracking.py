"""Metric tracking: always a local `history.jsonl`; Weights & Biases when logger=wandb.

W&B defaults to offline mode so runs work without a network; `wandb sync <dir>` uploads
them later. Every job is its own W&B run, finished even when the job fails.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class RunTracker:
    def __init__(self, out_dir: Path, *, backend: str = "none", project: str = "eapo-exp",
                 mode: str = "offline", entity: str | None = None, name: str | None = None,
                 group: str | None = None, job_type: str | None = None,
                 tags: list[str] | None = None, config: dict | None = None,
                 history: bool = True) -> None:
        """history=False: keep no history.jsonl (a job's non-main processes)."""
        self.out_dir = Path(out_dir)
        self.history_path = self.out_dir / "history.jsonl" if history else None
        self.wandb_run = None
        if backend == "wandb" and mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(project=project, entity=entity, mode=mode,
                                        dir=str(self.out_dir), name=name, group=group,
                                        job_type=job_type, tags=tags or [], config=config or {},
                                        reinit="finish_previous")
        elif backend not in ("none", "wandb"):
            raise ValueError(f"unknown logger {backend!r}; use none or wandb")

    def log(self, phase: str, step: int, metrics: dict[str, Any]) -> None:
        record = {"phase": phase, "step": step, "time": time.time(), **metrics}
        if self.history_path is not None:
            with open(self.history_path, "a") as handle:
                handle.write(json.dumps(record, default=float) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({f"{phase}/{k}": v for k, v in metrics.items()
                                if isinstance(v, (int, float))} | {f"{phase}/step": step})

    def log_histogram(self, phase: str, name: str, values) -> None:
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({f"{phase}/{name}": wandb.Histogram(list(values))})

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    def finish(self, failed: bool = False) -> None:
        if self.wandb_run is not None:
            mode = getattr(self.wandb_run.settings, "mode", "")
            directory = getattr(self.wandb_run.settings, "sync_dir", "")
            self.wandb_run.finish(exit_code=1 if failed else 0)
            if mode == "offline":
                print(f"W&B offline run saved; upload with: wandb sync {directory}")
            self.wandb_run = None
