"""Does a model's ranking follow item popularity? For one predictions file of an ML-100K
evaluation (predictions_<label>_<split>.jsonl, score mode: 21 scores in candidate order):
HR@1 of the model and of a popularity ranker (training-target counts) on the same samples,
how often their top-1 agree, the popularity rank of the model's top-1 among the 21
candidates, and the mean per-sample Spearman correlation of the scores with popularity and
with title length.

    python docs/results/cpu_recipe/popularity_agreement.py <job dir>/predictions_sft_valid.jsonl
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from eapo_exp.data.samples import build_samples
from eapo_exp.data.sources.ml100k import MovieLens100KSource
from eapo_exp.training.batches import subset_indices


def main(paths: list[str], cache_dir: str = ".cache/data", subset_seed: int = 0) -> None:
    samples = build_samples(MovieLens100KSource(cache_dir=cache_dir, title_with_year=True).load(),
                            item_noun="movie")
    counts = collections.Counter(samples.splits["train"]["target"])
    titles = samples.catalog.titles
    rng = np.random.default_rng(0)  # breaks popularity ties
    for path in paths:
        split = "valid" if path.endswith("_valid.jsonl") else "test"
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        data = samples.splits[split]
        data = data.select(subset_indices(len(data), len(rows), subset_seed))
        hits, pop_hits, agree, pop_rank, rho_pop, rho_len = [], [], [], [], [], []
        for row, sample in zip(rows, data, strict=True):
            if sample["target"] != row["target"]:
                raise SystemExit(f"{path}: row {row['index']} is not sample {sample['target']}; "
                                 f"was it evaluated with eval.subset_seed={subset_seed}?")
            candidates = sample["candidates"]
            scores = np.asarray(row["scores"])
            popularity = np.array([counts.get(c, 0) for c in candidates], dtype=float)
            by_popularity = [candidates[i] for i in np.lexsort((rng.random(len(candidates)),
                                                                -popularity))]
            top = candidates[int(np.argmax(scores))]
            hits.append(top == row["target"])
            pop_hits.append(by_popularity[0] == row["target"])
            agree.append(top == by_popularity[0])
            pop_rank.append(by_popularity.index(top) + 1)
            rho_pop.append(spearmanr(scores, popularity)[0])
            rho_len.append(spearmanr(scores, [len(titles[c]) for c in candidates])[0])
        print(f"{path}\n  n={len(rows)}  HR@1 {np.mean(hits):.3f}  popularity HR@1 "
              f"{np.mean(pop_hits):.3f}  same top-1 {np.mean(agree):.3f}  popularity rank of "
              f"the model's top-1: mean {np.mean(pop_rank):.2f} (random 11.00)\n"
              f"  Spearman(score, popularity) {np.nanmean(rho_pop):+.3f}  "
              f"Spearman(score, title length) {np.nanmean(rho_len):+.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
