"""The one entrypoint: `eapo-exp <overrides>` or `python -m eapo_exp <overrides>`."""

from __future__ import annotations

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from eapo_exp.config import register_configs

register_configs()

# conf/ sits next to the package in the repository (editable install); EAPO_CONF_DIR points
# elsewhere for installed copies.
CONF_DIR = os.environ.get("EAPO_CONF_DIR", str(Path(__file__).resolve().parents[1] / "conf"))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    from eapo_exp.pipeline import run_job  # heavy imports after Hydra has parsed the CLI

    return run_job(cfg)


if __name__ == "__main__":
    main()
