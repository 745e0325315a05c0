"""Data sources: each has plain constructor arguments and `load() -> InteractionData`."""

from eapo_exp.data.sources.amazon2018 import Amazon2018Source
from eapo_exp.data.sources.atomic import AtomicSource
from eapo_exp.data.sources.ml100k import MovieLens100KSource
from eapo_exp.data.sources.synthetic import SyntheticSource

__all__ = ["Amazon2018Source", "AtomicSource", "MovieLens100KSource", "SyntheticSource"]
