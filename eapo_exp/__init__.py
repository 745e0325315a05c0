"""eapo-exp: Hydra experiment framework for expert-guided adaptive preference optimization."""

__version__ = "0.1.0"
