"""The one entrypoint: `eapo-exp <overrides>` or `python -m eapo_exp <overrides>`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from eapo_exp.config import register_configs
from eapo_exp.errors import rerun_command

register_configs()

# conf/ sits next to the package in the repository (editable install); EAPO_CONF_DIR points
# elsewhere for installed copies.
CONF_DIR = os.environ.get("EAPO_CONF_DIR", str(Path(__file__).resolve().parents[1] / "conf"))
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by SIGINT


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def run(cfg: DictConfig) -> float | None:
    from eapo_exp.pipeline import run_job  # heavy imports after Hydra has parsed the CLI
    from eapo_exp.submitit_ranks import export_submitit_ranks

    ranks_from_submitit = export_submitit_ranks()
    result = run_job(cfg)
    if ranks_from_submitit and result.status == "ok":
        # main() does not run inside a submitit task: the task ends its process group here.
        from eapo_exp.distributed import end_processes

        end_processes()
    return result.objective


def main() -> None:
    # Hydra passes KeyboardInterrupt through; a job that was running has already written
    # status "interrupted" into its metrics.json (pipeline.run_job).
    try:
        run()
    except KeyboardInterrupt:
        # CPython (3.11) marks a KeyboardInterrupt that escaped any exec() of a string (a lazy
        # import that builds dataclasses, say) as unhandled and then ends the process by SIGINT
        # whatever sys.exit says; a clean exec() clears that mark.
        exec("None")  # noqa: S102 - a constant string
        print(f"eapo-exp: interrupted; resume with: {rerun_command()}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if "torch" in sys.modules:  # a job ran (--help and --cfg import no torch)
        from eapo_exp.distributed import end_processes

        end_processes()


if __name__ == "__main__":
    main()
