"""Build objects from `_target_` config nodes that also carry a display `name`."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eapo_exp.errors import ConfigError, EapoError


def build_object(node: DictConfig, exclude: tuple[str, ...] = ("name",), **kwargs):
    params = OmegaConf.to_container(node, resolve=True)
    for key in exclude:
        params.pop(key, None)
    try:
        return instantiate(params, **kwargs)
    except InstantiationException as error:
        # A constructor's own validation error (bad beta, u_beta, tau) is the user's message.
        if isinstance(error.__cause__, EapoError):
            raise error.__cause__ from None
        if isinstance(error.__cause__, TypeError):  # a key the constructor does not take
            where = node._key() if isinstance(node, DictConfig) else None
            raise ConfigError(f"{where or 'config node'} ({params.get('_target_')}): "
                              f"{error.__cause__}") from None
        raise
