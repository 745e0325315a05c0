"""Hydra callback: write the sweep report (tables + plots) when a multirun ends, then exit
non-zero when any of the sweep's jobs failed.

Enabled in conf/config.yaml; `hydra.callbacks.sweep_report.enabled=false` turns the report
off (the exit status still counts failed jobs); `pairs` (METHOD:REFERENCE strings) adds
paired comparisons beyond each method's base and SFT, as `eapo-report --pair` does, and
`axis_baselines` (AXIS=VALUE strings) as `--axis-baseline` does; `wandb` (auto: when the
sweep's jobs log to W&B) logs the report as a W&B run too. A failing report never fails
the sweep: the jobs' results are already on disk and `eapo-report <sweep dir>` can be rerun
by hand.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

EXIT_JOBS_FAILED = 1


class SweepReport(Callback):
    def __init__(self, enabled: bool = True, plots: bool = True, wandb: bool | str = "auto",
                 pairs: list[str] | None = None,
                 axis_baselines: list[str] | None = None) -> None:
        from eapo_exp.report.comparisons import parse_axis_baselines, parse_pairs

        self.enabled = bool(enabled)
        self.plots = bool(plots)
        if wandb not in (True, False, "auto"):
            raise ValueError(f"hydra.callbacks.sweep_report.wandb must be true, false or auto; "
                             f"got {wandb!r}")
        self.wandb = wandb
        try:
            parse_pairs(pairs)
        except ValueError as error:
            raise ValueError(f"hydra.callbacks.sweep_report.pairs: {error}") from None
        self.pairs = [str(pair) for pair in pairs or ()]
        try:
            parse_axis_baselines(axis_baselines)
        except ValueError as error:
            raise ValueError(f"hydra.callbacks.sweep_report.axis_baselines: {error}") from None
        self.axis_baselines = [str(entry) for entry in axis_baselines or ()]
        self.started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Under `accelerate launch` every process runs the sweep; the main one reports it.
        if int(os.environ.get("RANK", "0")) != 0:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if self.enabled:
            self.write_report(sweep_dir, wandb=self.wandb is True or (
                self.wandb == "auto" and config.logger.name == "wandb"))
        jobs = sweep_jobs(sweep_dir, self.started)
        failed = [path.name for path in jobs if not job_ok(path)]
        if failed:
            # SystemExit passes Hydra's callback guard (it catches Exception only).
            print(f"eapo-exp: error: {len(failed)} of {len(jobs)} sweep jobs failed: "
                  f"{', '.join(failed)} (their metrics.json and error.txt in {sweep_dir})",
                  file=sys.stderr)
            sys.exit(EXIT_JOBS_FAILED)

    def write_report(self, sweep_dir: Path, wandb: bool) -> None:
        from eapo_exp.report.cli import main

        argv = [str(sweep_dir), *([] if self.plots else ["--no-plots"]),
                *(["--wandb"] if wandb else []),
                *(arg for pair in self.pairs for arg in ("--pair", pair)),
                *(arg for entry in self.axis_baselines for arg in ("--axis-baseline", entry))]
        try:
            status = main(argv)
        except Exception as error:  # noqa: BLE001 - the sweep's results are already saved
            log.warning("sweep report failed (%s: %s); rerun: eapo-report %s",
                        type(error).__name__, error, sweep_dir)
            return
        if status != 0:
            log.warning("no sweep report for %s (eapo-report exit %d)", sweep_dir, status)


def sweep_jobs(sweep_dir: Path, since: float | None) -> list[Path]:
    """The sweep's job directories written since `since` (a reused sweep directory may still
    hold jobs of an earlier sweep)."""
    from eapo_exp.report.jobs import find_job_dirs

    if not sweep_dir.is_dir():
        return []
    jobs = [path for path in find_job_dirs(sweep_dir) if path != sweep_dir]
    if since is None:
        return jobs
    return [path for path in jobs if last_written(path) >= since - 1.0]


def last_written(job_dir: Path) -> float:
    times = [path.stat().st_mtime for path in (job_dir / ".hydra" / "overrides.yaml",
                                               job_dir / "metrics.json") if path.exists()]
    return max(times, default=0.0)


def job_ok(job_dir: Path) -> bool:
    try:
        return json.loads((job_dir / "metrics.json").read_text()).get("status") == "ok"
    except (OSError, ValueError, AttributeError):  # missing, unreadable or not an object
        return False
