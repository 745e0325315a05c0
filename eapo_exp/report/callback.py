"""Hydra callback: write the sweep report (tables + plots) when a multirun ends.

Enabled in conf/config.yaml; `hydra.callbacks.sweep_report.enabled=false` turns it off.
A failing report never fails the sweep: the jobs' results are already on disk and
`eapo-report <sweep dir>` can be rerun by hand.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    def __init__(self, enabled: bool = True, plots: bool = True, wandb: bool = False) -> None:
        self.enabled = bool(enabled)
        self.plots = bool(plots)
        self.wandb = bool(wandb)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Under `accelerate launch` every process runs the sweep; the main one reports it.
        if not self.enabled or int(os.environ.get("RANK", "0")) != 0:
            return
        from eapo_exp.report.cli import main

        sweep_dir = Path(config.hydra.sweep.dir)
        argv = [str(sweep_dir), *([] if self.plots else ["--no-plots"]),
                *(["--wandb"] if self.wandb else [])]
        try:
            status = main(argv)
        except Exception as error:  # noqa: BLE001 - the sweep's results are already saved
            log.warning("sweep report failed (%s: %s); rerun: eapo-report %s",
                        type(error).__name__, error, sweep_dir)
            return
        if status != 0:
            log.warning("no sweep report for %s (eapo-report exit %d)", sweep_dir, status)
