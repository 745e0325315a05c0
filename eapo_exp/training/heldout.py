"""Held-out preference diagnostics: does the preference stage rank the chosen item above the
rejected ones on samples it never trained on?

The held-out set is a fixed draw of validation samples (seeded by dataset.sample_seed, so
every method of a sweep sees the same one). Each sample's target is its chosen item and all
of its other candidates are rejected; prompts use the evaluation template. From the summed
log-probs of every candidate under the policy (log πθ) and under the reference the stage
starts from (log πref, the SFT model even for a reference-free loss; cached), per sample:

    reward_accuracy       share of its negatives l with r̂_w − r̂_l > 0, r̂ = log πθ − log πref
    reward_margin         mean of r̂_w − r̂_l over its negatives (no β, so methods compare)
    implicit_hr@1         1 when r̂_w is above every negative's r̂ (ties count against it)
    chosen_logp_change    r̂_w: how far the chosen title's log-prob moved (likelihood
                          displacement shows as a large negative value)
    rejected_logp_change  mean r̂_l
    likelihood_accuracy   share of negatives with log πθ(w) > log πθ(l)
    likelihood_hr@1       the target has the highest log πθ: score-mode HR@1 on these samples

Before training the policy is the reference, so the r̂ metrics are 0 by construction; only
the likelihood ones are measured then (on the reference). Summaries are means with a
percentile-bootstrap 95% interval over samples. A stage trained when the lower end of its
reward accuracy's interval is above 0.5.
"""

from __future__ import annotations

import numpy as np
import torch

from eapo_exp.data.prompts import PromptBuilder
from eapo_exp.data.schema import ItemCatalog, SampleSet
from eapo_exp.distributed import Runtime, default_runtime
from eapo_exp.errors import ConfigError
from eapo_exp.report import stats
from eapo_exp.training.batches import subset_indices
from eapo_exp.training.preference_data import PreferenceExample, compute_logps

HELDOUT_SPLIT = "valid"
CHANCE_ACCURACY = 0.5
# Measured on the policy and the reference alike; the others are changes from the reference.
LIKELIHOOD_METRICS = ("likelihood_accuracy", "likelihood_hr@1")
CURVE_PREFIX = "heldout/"


def heldout_examples(samples: SampleSet, count: int, seed: int,
                     split: str = HELDOUT_SPLIT) -> list[PreferenceExample]:
    """`count` samples of `split` (all when it has fewer), target first, then every other
    candidate in its list order."""
    if split not in samples.splits or len(samples.split(split)) == 0:
        raise ConfigError(f"train.preference.heldout_samples={count} needs a non-empty "
                          f"{split!r} split; this dataset has {sorted(samples.splits)} "
                          "(set train.preference.heldout_samples=0 to skip the diagnostics)")
    data = samples.split(split)
    rows = subset_indices(len(data), count, seed)
    examples = []
    for row, sample in zip(rows, data.select(rows)):
        target = int(sample["target"])
        rejected = [int(c) for c in sample["candidates"] if int(c) != target]
        examples.append(PreferenceExample(row=row, sample=dict(sample), rejected=rejected,
                                          split=split))
    return examples


def per_sample(policy: torch.Tensor, reference: torch.Tensor) -> dict[str, np.ndarray]:
    """The diagnostics of every sample from log-probs [N, 1 + negatives], chosen first."""
    policy, reference = policy.double(), reference.double()
    reward = policy - reference
    margins = reward[:, :1] - reward[:, 1:]
    likelihood = policy[:, :1] - policy[:, 1:]
    values = {
        "reward_accuracy": (margins > 0).double().mean(dim=1),
        "reward_margin": margins.mean(dim=1),
        "implicit_hr@1": (margins > 0).all(dim=1).double(),
        "chosen_logp_change": reward[:, 0],
        "rejected_logp_change": reward[:, 1:].mean(dim=1),
        "likelihood_accuracy": (likelihood > 0).double().mean(dim=1),
        "likelihood_hr@1": (likelihood > 0).all(dim=1).double(),
    }
    return {name: value.numpy() for name, value in values.items()}


def summarize(values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{metric: {mean, ci_low, ci_high}}: one bootstrap over samples for all metrics."""
    clusters = np.arange(len(next(iter(values.values()))))
    estimates = stats.mean_intervals(values, clusters)
    return {name: {"mean": e.value, "ci_low": e.low, "ci_high": e.high}
            for name, e in estimates.items()}


def trained(after: dict[str, dict[str, float]]) -> bool:
    """The reward accuracy is above chance with 95% confidence."""
    return bool(after["reward_accuracy"]["ci_low"] > CHANCE_ACCURACY)


class HeldoutProbe:
    """Scores the held-out set under a model (no grad, eval mode, sharded over the runtime's
    processes: a collective call) and keeps the last result."""

    def __init__(self, builder: PromptBuilder, catalog: ItemCatalog,
                 examples: list[PreferenceExample], reference: torch.Tensor, batch_size: int,
                 pad_id: int, runtime: Runtime | None = None) -> None:
        if len(examples) != len(reference):
            raise ValueError(f"{len(examples)} held-out examples but {len(reference)} rows of "
                             "reference log-probs")
        self.builder = builder
        self.catalog = catalog
        self.examples = examples
        self.reference = reference
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.runtime = runtime or default_runtime()
        self.last: dict[str, np.ndarray] | None = None
        self.last_step: int | None = None

    def __call__(self, model, step: int) -> dict[str, float]:
        """The curve's values at `step`: each metric's mean, keyed heldout/<metric>."""
        logps = compute_logps(model, self.builder, self.catalog, self.examples,
                              self.batch_size, self.pad_id, "held-out preference pairs",
                              runtime=self.runtime)["logps"]
        self.last, self.last_step = per_sample(logps, self.reference), step
        return {CURVE_PREFIX + name: float(value.mean()) for name, value in self.last.items()}

    def result(self) -> dict:
        """Before (the reference's likelihood metrics) and after (the last call), with
        intervals, and whether the stage trained."""
        if self.last is None:
            raise RuntimeError("the held-out probe has not scored the trained policy yet")
        before = per_sample(self.reference, self.reference)
        after = summarize(self.last)
        return {"split": self.examples[0].split, "samples": len(self.examples),
                "negatives": len(self.examples[0].rejected), "step": self.last_step,
                "before": summarize({m: before[m] for m in LIKELIHOOD_METRICS}),
                "after": after, "trained": trained(after)}
