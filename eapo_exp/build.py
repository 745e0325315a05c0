"""Build objects from `_target_` config nodes that also carry a display `name`."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


def build_object(node: DictConfig, exclude: tuple[str, ...] = ("name",), **kwargs):
    params = OmegaConf.to_container(node, resolve=True)
    for key in exclude:
        params.pop(key, None)
    return instantiate(params, **kwargs)
