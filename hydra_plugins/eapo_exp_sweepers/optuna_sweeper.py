"""The Optuna sweeper (hydra-optuna-sweeper) with eapo-exp's failure reporting.

A job that fails inside an Optuna study already logs one line (`job failed: ... (traceback
in .../error.txt)`) and returns no objective. The stock sweeper adds two more lines per such
trial, and ends a study in which no trial completed with a traceback from
`study.best_trial`. Here a failed trial stays one line, and a study without a completed trial
ends like any other sweep with failed jobs: one line from the sweeper, then the sweep report
naming every failed job, exit 1.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from omegaconf import OmegaConf

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the `launchers` extra is not installed: no Optuna sweeper to extend
    OptunaSweeper = None

log = logging.getLogger(__name__)

# What the stock sweeper logs for a trial whose job returned None.
_NONE_RETURN = "Return value must be float-castable. Got 'None'."
_NONE_ERROR = f'ValueError("{_NONE_RETURN}")'


class DropFailedJobEchoes(logging.Filter):
    """Drops the stock sweeper's lines about trials that returned None. A job returns None
    only when it failed (and said so itself): EapoOptunaSweeper refuses, before the first
    trial, a sweep whose jobs cannot return their validation HR@1."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message == f"Failed experiment: {_NONE_RETURN}":
            return False
        if message.startswith("Failed [") and " times out of " in message:
            listed = message[len("Failed ["):message.index("] times out of ")]
            return set(listed.split(", ")) != {_NONE_ERROR}
        return True


if OptunaSweeper is not None:

    class EapoOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> Any:
            splits = OmegaConf.select(self.sweeper.config, "eval.splits") or []
            if "valid" not in splits:
                print(f"eapo-exp: error: the Optuna sweeper maximises validation HR@1, but "
                      f"eval.splits={list(splits)} has no 'valid'; add it "
                      "(e.g. eval.splits=[valid,test])", file=sys.stderr)
                sys.exit(2)
            impl_logger = logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl")
            echoes = DropFailedJobEchoes()
            impl_logger.addFilter(echoes)
            try:
                return super().sweep(arguments)
            except ValueError as error:
                if str(error) != "No trials are completed yet.":
                    raise
                # The sweep report (on_multirun_end) then lists the failed jobs and exits 1.
                log.error("no trial of the Optuna study completed, so no "
                          "optimization_results.yaml")
                return None
            finally:
                impl_logger.removeFilter(echoes)
