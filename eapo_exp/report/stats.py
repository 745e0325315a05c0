"""Paired statistics for comparing two recommenders on the same test samples.

Everything works on per-sample scores (HR@1, HR@5, NDCG@5 of one ranked sample), so two
methods evaluated on the same samples are compared sample by sample, which removes the
variance of sample difficulty that two independent means would carry.

Resampling unit: the test sample. Observations are (seed, sample) pairs and `clusters`
gives each its sample id; a bootstrap draw takes test samples with replacement and keeps
every seed's observation of a drawn sample together. With the usual shared test subset
(eval.subset_seed does not change with the seed) this is a cluster bootstrap over samples,
pooled over seeds; when seeds were evaluated on different samples every (seed, sample) is
its own cluster. Seeds are treated as fixed: the intervals describe test-sample noise for
the trained models at hand, not the spread of training runs (the summary's ± std over
seeds shows that).

The exact McNemar test pools the discordant (seed, sample) pairs of all seeds as if they
were independent; with several seeds on the same samples it is optimistic, which is why
the verdict needs the cluster-bootstrap interval as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

METRICS = ("hr@1", "hr@5", "ndcg@5")
N_RESAMPLES = 5000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
# Upper bound on the resample-count matrix built at once (entries), to bound memory.
CHUNK_ENTRIES = 4_000_000

BETTER, WORSE, NOISE = "better", "worse", "within noise"


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile-bootstrap interval."""

    value: float
    low: float
    high: float


def sample_metrics(ranks) -> dict[str, np.ndarray]:
    """Per-sample HR@1, HR@5 and NDCG@5 of 1-based target ranks (0 = not in the list).

    Their means are eapo_exp.evaluation.metrics.metrics_from_ranks(ranks): a hit at k is
    0 < rank <= k, NDCG@5 is 1/log2(rank + 1) on a hit at 5, else 0.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    found = ranks > 0
    hit1 = found & (ranks <= 1)
    hit5 = found & (ranks <= 5)
    gains = np.where(hit5, 1.0 / np.log2(np.maximum(ranks, 1) + 1.0), 0.0)
    return {"hr@1": hit1.astype(float), "hr@5": hit5.astype(float), "ndcg@5": gains}


def resample_counts(n_clusters: int, n_resamples: int,
                    rng: np.random.Generator) -> Iterator[np.ndarray]:
    """[b, n_clusters] draw counts of a bootstrap over clusters, in chunks of rows."""
    rows = max(1, CHUNK_ENTRIES // max(n_clusters, 1))
    for start in range(0, n_resamples, rows):
        size = min(rows, n_resamples - start)
        drawn = rng.integers(0, n_clusters, size=(size, n_clusters))
        offsets = np.arange(size)[:, None] * n_clusters
        counts = np.bincount((drawn + offsets).ravel(), minlength=size * n_clusters)
        yield counts.reshape(size, n_clusters)


def bootstrap_means(values: np.ndarray, clusters: np.ndarray, n_resamples: int = N_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[n_resamples, k] means of values [n, k] over bootstrap draws of clusters [n].

    A draw's mean is sum(count_j * cluster_sum_j) / sum(count_j * cluster_size_j): every
    observation of a drawn cluster enters as often as the cluster was drawn.
    """
    values = np.asarray(values, dtype=float).reshape(len(clusters), -1)
    codes, clusters = np.unique(np.asarray(clusters), return_inverse=True)
    sums = np.zeros((len(codes), values.shape[1]))
    np.add.at(sums, clusters, values)
    sizes = np.bincount(clusters, minlength=len(codes)).astype(float)
    rng = np.random.default_rng(seed)
    draws = [(counts @ sums) / (counts @ sizes)[:, None]
             for counts in resample_counts(len(codes), n_resamples, rng)]
    return np.concatenate(draws)


def mean_intervals(scores: dict[str, np.ndarray], clusters: np.ndarray,
                   n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                   confidence: float = CONFIDENCE) -> dict[str, Estimate]:
    """Mean of each score vector with its percentile-bootstrap interval.

    All vectors share one set of draws, so the intervals of one call are computed on the
    same resampled test sets.
    """
    names = list(scores)
    values = np.column_stack([np.asarray(scores[name], dtype=float) for name in names])
    draws = bootstrap_means(values, clusters, n_resamples, seed)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    means = values.mean(axis=0)
    return {name: Estimate(float(means[i]), float(low[i]), float(high[i]))
            for i, name in enumerate(names)}


def paired_differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                       clusters: np.ndarray, n_resamples: int = N_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED,
                       confidence: float = CONFIDENCE) -> dict[str, Estimate]:
    """Mean of a − b per metric (row i of a and b is the same observation), with the
    paired bootstrap interval: a draw resamples test samples, not the two methods apart."""
    differences = {name: np.asarray(a[name], float) - np.asarray(b[name], float)
                   for name in a if name in b}
    return mean_intervals(differences, clusters, n_resamples, seed, confidence)


def binomial_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer sums, one final division)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    term, total = 1, 1  # C(n, 0)
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    return total / (1 << n)  # int / int is correctly rounded for any size


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (a hit only by the
    first method, only by the second): 2 · P(X <= min(b, c)), X ~ Binomial(b + c, 1/2),
    capped at 1."""
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_cdf_half(min(int(b), int(c)), n))


def discordant_pairs(hits_a: np.ndarray, hits_b: np.ndarray) -> tuple[int, int]:
    """(hits of a missed by b, hits of b missed by a) over paired observations."""
    hits_a = np.asarray(hits_a) > 0.5
    hits_b = np.asarray(hits_b) > 0.5
    return int((hits_a & ~hits_b).sum()), int((~hits_a & hits_b).sum())


def verdict(difference: Estimate, p_value: float | None = None,
            confidence: float = CONFIDENCE) -> str:
    """better / worse when the interval excludes 0, else within noise.

    With a p-value (HR@1's exact McNemar test) the verdict also needs p < 1 − confidence:
    near the boundary the percentile bootstrap is slightly liberal on small samples, and a
    row should not call "better" what the exact test printed beside it does not reject.
    """
    if p_value is not None and not p_value < 1.0 - confidence:
        return NOISE
    if difference.low > 0.0:
        return BETTER
    if difference.high < 0.0:
        return WORSE
    return NOISE

