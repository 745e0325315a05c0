"""Metric tracking: always a local `history.jsonl`; Weights & Biases when logger=wandb.

W&B runs offline unless logger.mode or the user's W&B settings say otherwise
(`resolve_wandb_mode`), so runs work without a network; `wandb sync <dir>` uploads them
later. Every job is its own W&B run, finished even when the job fails; a failed run carries
the error in its summary (`error`) and notes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from eapo_exp.errors import ConfigError

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")


class RunTracker:
    def __init__(self, out_dir: Path, *, backend: str = "none", project: str = "eapo-exp",
                 mode: str | None = None, entity: str | None = None, name: str | None = None,
                 group: str | None = None, job_type: str | None = None,
                 tags: list[str] | None = None, config: dict | None = None,
                 history: bool = True) -> None:
        """history=False: keep no history.jsonl (a job's non-main processes)."""
        self.out_dir = Path(out_dir)
        self.history_path = self.out_dir / "history.jsonl" if history else None
        self.wandb_run = None
        if backend not in ("none", "wandb"):
            raise ConfigError(f"logger.name must be none or wandb; got {backend!r}")
        if backend == "wandb" and (mode := resolve_wandb_mode(mode)) != "disabled":
            self.wandb_run = start_wandb(project=project, entity=entity, mode=mode,
                                         dir=str(self.out_dir), name=name, group=group,
                                         job_type=job_type, tags=tags or [],
                                         config=config or {})

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

    def finish(self, failed: bool = False, error: str | None = None, status: str = "failed",
               exit_code: int = 1) -> None:
        """failed: the job did not complete; `status` and `error` (what stopped it) go into the
        run's summary, and the error into its notes, so the W&B UI shows why."""
        if self.wandb_run is not None:
            mode = getattr(self.wandb_run.settings, "mode", "")
            directory = getattr(self.wandb_run.settings, "sync_dir", "")
            if failed:
                self.wandb_run.summary.update({"status": status, "error": error or ""})
                if error:
                    self.wandb_run.notes = error
            self.wandb_run.finish(exit_code=exit_code if failed else 0)
            if mode == "offline":
                print(f"W&B offline run saved; upload with: wandb sync {directory}")
            self.wandb_run = None


def resolve_wandb_mode(mode: str | None) -> str:
    """`mode` when given; else the user's W&B settings: WANDB_MODE, then a `mode` in W&B's
    settings files (`wandb offline` writes one; `wandb online` removes it); else offline."""
    if mode is not None:
        return mode
    if os.environ.get("WANDB_MODE"):
        from_env = os.environ["WANDB_MODE"].lower()
        from_env = {"dryrun": "offline", "run": "online"}.get(from_env, from_env)  # W&B aliases
        if from_env not in WANDB_MODES:
            raise ConfigError(f"WANDB_MODE must be one of {', '.join(WANDB_MODES)}; "
                              f"got {os.environ['WANDB_MODE']!r}")
        return from_env
    import wandb

    settings = wandb.setup().settings  # W&B's own reading of its settings files
    return settings.mode if "mode" in settings.model_fields_set else "offline"


def start_wandb(*, mode: str, **kwargs):
    """wandb.init with a one-line error for a bad mode or a run that cannot start (wandb
    reports both as multi-line tracebacks)."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode must be one of {', '.join(WANDB_MODES)}; got {mode!r}")
    import wandb

    try:
        return wandb.init(mode=mode, reinit="finish_previous", **kwargs)
    except Exception as error:
        first = next((line for line in str(error).splitlines() if line.strip()), "")
        raise ConfigError(f"W&B run could not start (logger.mode={mode}): "
                          f"{type(error).__name__}: {first}") from error
