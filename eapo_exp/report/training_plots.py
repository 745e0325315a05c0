"""Training plots of a sweep's preference jobs: reward margins over training (paper Fig.
2b/5), reward-discrepancy distributions (Fig. 1b/3) and per-pair β histograms, one line or
histogram per legend label (method and its swept axes)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from eapo_exp.report.figures import new_figure, save_figure, sorted_groups
from eapo_exp.report.jobs import JobRecord


def read_history(path: Path, phase: str = "preference") -> pd.DataFrame:
    rows = []
    try:
        with open(path) as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("phase") == phase:
                    rows.append(record)
    except OSError:
        return pd.DataFrame()
    return pd.DataFrame(rows)


def plot_reward_margins(jobs: list[JobRecord], labels: dict[str, str], out_path: Path,
                        key: str = "rewards/margins") -> Path | None:
    """Reward margin (chosen − rejected) over preference-training steps, mean over seeds."""
    curves: dict[str, list[pd.Series]] = defaultdict(list)
    for job in jobs:
        if job.job not in labels or not (job.path / "history.jsonl").is_file():
            continue
        history = read_history(job.path / "history.jsonl")
        if history.empty or key not in history or "step" not in history:
            continue
        series = history.dropna(subset=[key]).groupby("step")[key].mean()
        if not series.empty:
            curves[labels[job.job]].append(series)
    if not curves:
        return None
    fig, (ax,) = new_figure()
    for label, series in sorted_groups(curves):
        table = pd.concat(series, axis=1)
        mean = table.mean(axis=1)
        ax.plot(mean.index, mean.values, label=f"{label} [{len(series)} run(s)]")
        if len(series) >= 2:
            std = table.std(axis=1, ddof=1).fillna(0.0)
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("preference training step")
    ax.set_ylabel("reward margin (chosen − rejected)")
    ax.set_title("Reward margin during preference training (mean ± std over seeds)")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_path)


def _load_array(path: Path) -> np.ndarray | None:
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    values = np.asarray(values, dtype=float).ravel()
    values = values[np.isfinite(values)]
    return values if values.size else None


def _discrepancy_values(job: JobRecord) -> np.ndarray | None:
    values = _load_array(job.path / "reward_discrepancy.npy")
    if values is not None:
        return values
    for block in ((job.metrics or {}).get("analysis") or {}).values():
        found = (block or {}).get("reward_discrepancy") if isinstance(block, dict) else None
        if isinstance(found, dict) and isinstance(found.get("values"), list) and found["values"]:
            array = np.asarray([v for v in found["values"] if isinstance(v, (int, float))],
                               dtype=float)
            if array.size:
                return array
    return None


def _plot_histograms(groups: dict[str, list[np.ndarray]], out_path: Path, title: str,
                     xlabel: str, zero_line: bool = False) -> Path | None:
    if not groups:
        return None
    pooled = {label: np.concatenate(arrays) for label, arrays in groups.items()}
    everything = np.concatenate(list(pooled.values()))
    low, high = float(everything.min()), float(everything.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 41)
    fig, (ax,) = new_figure()
    for label, values in sorted_groups(pooled):
        ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.5,
                label=f"{label} (mean {values.mean():.3f}, n={values.size})")
    if zero_line and low < 0 < high:
        ax.axvline(0.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out_path)


def plot_reward_discrepancy(jobs: list[JobRecord], labels: dict[str, str],
                            out_path: Path) -> Path | None:
    """Overlaid histograms of the chosen − rejected reward per training pair, per method.

    Uses the post-training values (reward_discrepancy.npy, else metrics.json analysis
    values); when no job has them, the values logged during training
    (train_discrepancy.npy), with the title saying so.
    """
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for job in jobs:
        if job.job in labels:
            values = _discrepancy_values(job)
            if values is not None:
                groups[labels[job.job]].append(values)
    title = "Reward discrepancy (chosen − rejected) after preference training"
    if not groups:
        for job in jobs:
            if job.job in labels:
                values = _load_array(job.path / "train_discrepancy.npy")
                if values is not None:
                    groups[labels[job.job]].append(values)
        title = "Reward discrepancy (chosen − rejected) during preference training"
    return _plot_histograms(groups, out_path, title, "reward discrepancy per training pair",
                            zero_line=True)


def plot_expert_betas(jobs: list[JobRecord], labels: dict[str, str],
                      out_path: Path) -> Path | None:
    """Histogram of the per-pair β (betas.npy or train_betas.npy), per method."""
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for job in jobs:
        if job.job in labels:
            values = _load_array(job.path / "betas.npy")
            if values is None:
                values = _load_array(job.path / "train_betas.npy")
            if values is not None:
                groups[labels[job.job]].append(values)
    return _plot_histograms(groups, out_path, "β per training pair", "β")


HELDOUT_PANELS = (("heldout/reward_accuracy", "held-out reward accuracy", 0.5),
                  ("heldout/likelihood_hr@1", "held-out HR@1 (policy's own ranking)", None))


def plot_heldout_learning(jobs: list[JobRecord], labels: dict[str, str],
                          out_path: Path) -> Path | None:
    """Held-out reward accuracy and HR@1 against preference examples seen (the curve every
    train.preference.heldout_every steps, and the last step), mean over seeds; HR@1 starts
    at the reference's value (0 examples)."""
    curves: dict[str, list[pd.DataFrame]] = defaultdict(list)
    for job in jobs:
        if job.job not in labels or not (job.path / "history.jsonl").is_file():
            continue
        history = read_history(job.path / "history.jsonl")
        keys = [key for key, _, _ in HELDOUT_PANELS]
        if history.empty or not set(keys) <= set(history) or \
                "heldout/examples_seen" not in history:
            continue
        table = history.dropna(subset=keys).groupby("heldout/examples_seen")[keys].mean()
        before = (((job.metrics or {}).get("preference") or {}).get("heldout") or {}) \
            .get("before", {}).get("likelihood_hr@1", {}).get("mean")
        if before is not None:
            table.loc[0, "heldout/likelihood_hr@1"] = before
        curves[labels[job.job]].append(table.sort_index())
    if not curves:
        return None
    fig, axes = new_figure(ncols=len(HELDOUT_PANELS))
    for ax, (key, title, chance) in zip(axes, HELDOUT_PANELS):
        for label, tables in sorted_groups(curves):
            joined = pd.concat([t[key] for t in tables], axis=1)
            mean = joined.mean(axis=1).dropna()
            ax.plot(mean.index, mean.values, marker="o", markersize=3,
                    label=f"{label} [{len(tables)} run(s)]")
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xlabel("preference examples seen")
        ax.set_ylabel(title)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out_path)
