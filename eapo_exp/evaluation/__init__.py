"""Evaluation: candidate ranking (score, constrained beam, free generation) and metrics.

Submodules are imported lazily by their users so that `eapo_exp.evaluation.metrics` stays
light (numpy only).
"""
