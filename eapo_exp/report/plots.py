"""Sweep plots (matplotlib, Agg): metric vs U_β, metric vs expert data fraction (with 95%
CIs where predictions exist), paired differences with their CIs, and the training plots of
eapo_exp.report.training_plots. Each plot is drawn only when its data exists."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from eapo_exp.report.comparisons import SweepStatistics, sweep_statistics
from eapo_exp.report.figures import group_label, new_figure, save_figure
from eapo_exp.report.grouping import BASES, axis_columns, axis_label, method_rank, missing, scoped
from eapo_exp.report.jobs import JobRecord, rows_from_jobs, scan_jobs
from eapo_exp.report.training_plots import (
    plot_expert_betas,
    plot_heldout_learning,
    plot_reward_discrepancy,
    plot_reward_margins,
)

log = logging.getLogger(__name__)

PLOT_METRICS = (("hr@1", "HR@1"), ("ndcg@5", "NDCG@5"))
AXIS_LABELS = {"beta_schedule.u_beta": "U_β (upper bound of the expert β)",
               "expert.data_fraction": "expert training-data fraction"}
AXIS_TITLES = {"beta_schedule.u_beta": "U_β", "expert.data_fraction": "expert data fraction"}
VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "within noise": "tab:grey"}
# Rows of the classic recommenders (the expert itself, popularity) sit near HR@1 0.5 where the
# language models sit near 0.07; on one y axis they flatten the LLM lines.
CLASSIC_KINDS = ("expert", "popularity")
CI_CAPTION = "error bars: 95% CI, bootstrap over test samples pooled over seeds"
STD_CAPTION = "error bars: ± std over seeds"


def interval_lookup(intervals: pd.DataFrame | None, split: str, axis: str,
                     others: list[str]) -> dict[tuple, tuple[float, float]]:
    """(method, *other axes as str, axis value or None, metric) -> (ci_low, ci_high)."""
    if intervals is None or intervals.empty or axis not in intervals:
        return {}
    lookup = {}
    for _, row in intervals[intervals["split"] == split].iterrows():
        x = pd.to_numeric(row[axis], errors="coerce")
        key = (row["method"], *("" if missing(row[o]) else str(row[o]) for o in others),
               None if pd.isna(x) else float(x), row["metric"])
        lookup[key] = (row["ci_low"], row["ci_high"])
    return lookup


def _error_bars(stats: pd.DataFrame, found: list) -> tuple[np.ndarray, str]:
    """[2, points] error bars: the CIs when every point has one, else ± std over seeds."""
    if found and all(ci is not None for ci in found):
        low, high = np.asarray(found, dtype=float).T
        mean = stats["mean"].to_numpy()
        return np.clip([mean - low, high - mean], 0.0, None), CI_CAPTION
    std = stats["std"].where(stats["count"] >= 2, 0.0).fillna(0.0).to_numpy()
    return np.vstack([std, std]), STD_CAPTION


def is_classic(line: pd.DataFrame) -> bool:
    return bool(line["kind"].isin(CLASSIC_KINDS).all())


def axis_lines(on_axis: pd.DataFrame, axis: str, others: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """The lines of a metric-vs-axis plot: ((method, *other axis values), rows), in method
    order. A line of one point (a method run at one value of this axis while another axis
    was swept) says nothing about this axis, so such lines are dropped when any line has
    two or more points."""
    grouped = on_axis.groupby(["method", *others], sort=False)
    lines = sorted(((key if isinstance(key, tuple) else (key,), rows) for key, rows in grouped),
                   key=lambda kv: method_rank(kv[0][0]))
    spread = [(key, rows) for key, rows in lines if rows[axis].nunique() >= 2]
    return spread or lines


def plot_metric_vs_axis(df: pd.DataFrame, axis: str, out_path: Path, split: str = "test",
                        intervals: pd.DataFrame | None = None) -> Path | None:
    """Mean over seeds of HR@1 and NDCG@5 against a swept numeric axis, with error bars:
    the 95% CIs of `intervals` (comparisons.method_intervals) when a line has them, else
    ± std over seeds.

    One line per method (and per value of any other swept axis). The base method of an
    expert-guided variant (e.g. DPO for EAPO), when present without the axis, is drawn as
    a dashed horizontal line, with its CI as a band. Classic recommenders swept along the
    axis (the expert trained on a fraction of the data) are drawn dotted on a right-hand
    axis of their own.
    """
    if axis not in df.columns or df.empty:
        return None
    axes = axis_columns(df)
    if axis not in axes:
        return None
    part = scoped(df[df["split"] == split], axes)
    if part.empty:
        return None
    part = part.copy()
    part[axis] = pd.to_numeric(part[axis], errors="coerce")
    others = [a for a in axes if a != axis]
    for other in others:
        part[other] = part[other].map(lambda v: "" if missing(v) else str(v))
    on_axis = part[part[axis].notna()]
    if on_axis[axis].nunique() < 2:
        return None
    metrics = [(m, name) for m, name in PLOT_METRICS if m in part and part[m].notna().any()]
    if not metrics:
        return None
    fig, panels = new_figure(len(metrics), 5.2, 3.8)
    groups = axis_lines(on_axis, axis, others)
    flat = part[part[axis].isna()]
    bases = {BASES[m] for m in on_axis["method"].unique() if m in BASES}
    lookup = interval_lookup(intervals, split, axis, others)
    captions = set()
    for panel, (metric, name) in zip(panels, metrics, strict=True):
        classic_panel = None
        for index, (key, group) in enumerate(groups):
            per_seed = group.groupby([axis, "seed"], dropna=False)[metric].mean().reset_index()
            stats = per_seed.groupby(axis)[metric].agg(["mean", "std", "count"]).sort_index()
            found = [lookup.get((*key, float(x), metric)) for x in stats.index]
            err, caption = _error_bars(stats, found)
            captions.add(caption)
            label = group_label(key[0], dict(zip(others, key[1:], strict=True)))
            target, style = panel, "-"
            if is_classic(group):
                if classic_panel is None:
                    classic_panel = panel.twinx()
                    classic_panel.set_ylabel(f"{name}, classic recommenders (dotted)")
                target, style, label = classic_panel, ":", f"{label} (right axis)"
            target.errorbar(stats.index, stats["mean"], yerr=err, marker="o", capsize=3,
                            linestyle=style, label=label, color=f"C{index}")
        for base in sorted(bases, key=method_rank):
            values = flat.loc[flat["method"] == base]
            if values.empty:
                continue
            mean = values.groupby("seed")[metric].mean().mean()
            band = lookup.get((base, *[""] * len(others), None, metric))
            panel.axhline(mean, linestyle="--", color="grey", linewidth=1,
                          label=f"{base} (no {axis_label(axis)}"
                                + ("; band: 95% CI)" if band is not None else ")"))
            if band is not None:
                panel.axhspan(*band, color="grey", alpha=0.12)
        panel.set_xlabel(AXIS_LABELS.get(axis, axis))
        panel.set_ylabel(name)
        panel.set_title(f"{name} vs {AXIS_TITLES.get(axis, axis)} ({split})")
        panel.grid(alpha=0.3)
        handles, labels = panel.get_legend_handles_labels()
        if classic_panel is not None:
            more = classic_panel.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        panel.legend(handles, labels, fontsize=8)
    fig.suptitle("mean over seeds; " + "; ".join(sorted(captions)), fontsize=9)
    return save_figure(fig, out_path)


def _comparison_label(row: pd.Series, axes: list[str]) -> str:
    label = group_label(row["method"], {a: row[a] for a in axes if a in row})
    return f"{label} − {row['reference']} (n={row['n']}, seeds={row['seeds']})"


def plot_paired_differences(comparisons: pd.DataFrame, axes: list[str], out_path: Path,
                            split: str = "test") -> Path | None:
    """Every method − reference difference of HR@1 and NDCG@5 with its paired 95% CI,
    coloured by verdict, against a zero line."""
    part = comparisons[comparisons["split"] == split] if len(comparisons) else comparisons
    metrics = [(m, name) for m, name in PLOT_METRICS if (part["metric"] == m).any()]
    if not metrics:
        return None
    rows = int(max((part["metric"] == m).sum() for m, _ in metrics))
    fig, panels = new_figure(len(metrics), 6.4, 1.4 + 0.35 * rows)
    tables = [part[part["metric"] == metric].reset_index(drop=True) for metric, _ in metrics]
    labels = [[_comparison_label(r, axes) for _, r in table.iterrows()] for table in tables]
    # The same comparisons on every metric: their (long) labels once, on the left panel,
    # so they do not squeeze the panels to their right.
    shared = all(names == labels[0] for names in labels)
    for index, (panel, (metric, name), table) in enumerate(zip(panels, metrics, tables,
                                                               strict=True)):
        y = np.arange(len(table))[::-1]
        diff = table["difference"].to_numpy(dtype=float)
        err = np.clip([diff - table["ci_low"].to_numpy(dtype=float),
                       table["ci_high"].to_numpy(dtype=float) - diff], 0.0, None)
        for verdict, colour in VERDICT_COLOURS.items():
            chosen = (table["verdict"] == verdict).to_numpy()
            if chosen.any():
                panel.errorbar(diff[chosen], y[chosen], xerr=err[:, chosen], fmt="o",
                               color=colour, capsize=3, label=verdict)
        panel.axvline(0.0, color="black", linewidth=0.8)
        panel.set_yticks(y)
        panel.set_yticklabels(labels[index] if index == 0 or not shared else [], fontsize=8)
        panel.set_xlabel(f"{name} difference (method − reference)")
        panel.set_title(f"Paired {name} differences, 95% CI ({split})", fontsize=10)
        panel.grid(alpha=0.3, axis="x")
        panel.legend(fontsize=8)
    return save_figure(fig, out_path)


def _job_groups(jobs: list[JobRecord], df: pd.DataFrame) -> dict[str, str]:
    """job -> legend label (its preference method plus the swept axes relevant to it)."""
    if df.empty:
        return {job.job: job.method for job in jobs if job.ok and job.method}
    axes = axis_columns(df)
    rows = scoped(df[df["kind"] == "preference"], axes).drop_duplicates("job")
    labels = {}
    for _, row in rows.iterrows():
        labels[row["job"]] = group_label(row["method"], {a: row[a] for a in axes})
    for job in jobs:
        if job.ok and job.job not in labels and job.method:
            labels[job.job] = job.method
    return labels


def make_plots(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike, split: str = "test",
               jobs: list[JobRecord] | None = None, df: pd.DataFrame | None = None,
               stats: SweepStatistics | None = None) -> list[Path]:
    """Write every plot whose data exists into out_dir; returns the files written.

    `jobs`/`df` (from scan_jobs / rows_from_jobs) and `stats` (sweep_statistics) skip
    re-reading the sweep when given.
    """
    out = Path(out_dir)
    if jobs is None:
        jobs = scan_jobs(sweep_dir)
    if df is None:
        df, _ = rows_from_jobs(jobs)
    if stats is None:
        stats = sweep_statistics(jobs, df)
    jobs = [job for job in jobs if job.ok]
    written: list[Path] = []
    steps = [
        lambda: plot_metric_vs_axis(df, "beta_schedule.u_beta",
                                    out / f"metric_vs_u_beta_{split}.png", split,
                                    stats.intervals),
        lambda: plot_metric_vs_axis(df, "expert.data_fraction",
                                    out / f"metric_vs_data_fraction_{split}.png", split,
                                    stats.intervals),
        lambda: plot_paired_differences(stats.comparisons, stats.axes,
                                        out / f"paired_differences_{split}.png", split),
    ]
    labels = _job_groups(jobs, df)
    steps += [
        lambda: plot_reward_margins(jobs, labels, out / "reward_margins.png"),
        lambda: plot_heldout_learning(jobs, labels, out / "heldout_learning.png"),
        lambda: plot_reward_discrepancy(jobs, labels, out / "reward_discrepancy.png"),
        lambda: plot_expert_betas(jobs, labels, out / "expert_betas.png"),
    ]
    for step in steps:
        try:
            path = step()
        except Exception as error:  # noqa: BLE001 - one bad plot must not lose the others
            log.warning("plot failed: %s: %s", type(error).__name__, error)
            continue
        if path is not None:
            written.append(path)
    return written
