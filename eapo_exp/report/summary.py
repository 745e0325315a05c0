"""Summarise collected rows: per split, one row per method and swept-axis values, mean ± std
over seeds, the relative difference to the method's base; and the per-method analysis table.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from eapo_exp.report.grouping import (
    BASES,
    axis_columns,
    hashable,
    method_rank,
    metric_columns,
    missing,
    scoped,
    sort_value,
    split_names,
)
from eapo_exp.report.jobs import JobRecord


def format_value(mean: float, std: float | None, gain: float | None = None,
                 digits: int = 4) -> str:
    if missing(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    if gain is not None and not math.isnan(gain):
        text += f" ({gain:+.2f}%)"
    return text


def summarize(df: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Methods as rows, metrics as columns for one split, averaged over seeds.

    Rows are keyed by method plus every axis the sweep varies (e.g. beta_schedule.u_beta).
    Rows of one (key, seed) are averaged first (a shared SFT or expert evaluated in several
    jobs counts once per seed), then mean and std (ddof=1, only with ≥2 seeds) over seeds.
    Columns: method, the axes, seeds, n, and per metric m: `m` (display string
    "mean ± std"), `m_mean`, `m_std`, `m_gain` (relative difference in % to the method's
    base in eapo_exp.methods, e.g. DPO for EAPO, when the base with the same axis values is
    present; kept in the CSV only, the report judges differences by paired intervals).
    """
    axes = axis_columns(df)
    metrics = metric_columns(df)
    columns = ["method", *axes, "seeds", "n"]
    for m in metrics:
        columns += [m, f"{m}_mean", f"{m}_std", f"{m}_gain"]
    part = scoped(df[df["split"] == split], axes) if len(df) else df
    if part.empty:
        return pd.DataFrame(columns=columns)
    part = part.copy()
    part["_seed"] = part["seed"].map(lambda s: "-" if missing(s) else hashable(s))
    for axis in axes:
        part[axis] = part[axis].map(lambda v: None if missing(v) else hashable(v))
    keys = ["method", *axes]
    numeric = [*metrics, "n"] if "n" in part else metrics
    per_seed = part.groupby([*keys, "_seed"], dropna=False, sort=False)[numeric].mean()
    per_seed = per_seed.reset_index()
    rows = []
    for key, group in per_seed.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for axis in axes:
            if missing(row[axis]):
                row[axis] = None
        row["seeds"] = int(group["_seed"].nunique())
        row["n"] = _format_n(group["n"]) if "n" in group else None
        for m in metrics:
            values = group[m].dropna()
            row[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) >= 2 else math.nan
            row[f"{m}_gain"] = math.nan
        rows.append(row)
    _add_gains(rows, axes, metrics)
    counts = {m for m in metrics if is_count(per_seed[m])}
    for row in rows:
        for m in metrics:
            digits = 1 if m in counts else 4
            if m in counts and float(row[f"{m}_mean"]).is_integer():
                digits = 0
            row[m] = format_value(row[f"{m}_mean"], row[f"{m}_std"], digits=digits)
    rows.sort(key=lambda r: (method_rank(r["method"]), *(sort_value(r[a]) for a in axes)))
    return pd.DataFrame(rows, columns=columns)


def is_count(values: pd.Series) -> bool:
    """Whole numbers above 1 (tokens, replies): their means print with 0-1 decimals, not 4."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(values)) and bool((values == values.round()).all()) and values.max() > 1


def _format_n(values: pd.Series) -> Any:
    values = values.dropna()
    if values.empty:
        return None
    mean = float(values.mean())
    return int(mean) if mean.is_integer() else round(mean, 1)


def find_reference(row: dict, rows: list[dict], axes: list[str], name: str) -> dict | None:
    """The one row of method `name` that row is compared with, or None."""
    candidates = [r for r in rows if r["method"] == name]
    # A base row matches when it agrees on every axis it has (None = axis not applicable).
    matches = [r for r in candidates
               if all(r[a] is None or r[a] == row[a] for a in axes)]
    exact = [r for r in matches if all(r[a] == row[a] for a in axes)]
    chosen = exact or matches
    return chosen[0] if len(chosen) == 1 else None


def _add_gains(rows: list[dict], axes: list[str], metrics: list[str]) -> None:
    for row in rows:
        base = BASES.get(row["method"])
        found = None if base is None else find_reference(row, rows, axes, base)
        if found is None:
            continue
        for m in metrics:
            ref, value = found[f"{m}_mean"], row[f"{m}_mean"]
            if ref and not math.isnan(ref) and not math.isnan(value):
                row[f"{m}_gain"] = (value - ref) / ref * 100.0


def summarize_all(df: pd.DataFrame) -> pd.DataFrame:
    """summarize() for every split, stacked with a leading `split` column."""
    parts = []
    for split in split_names(df):
        table = summarize(df, split)
        table.insert(0, "split", split)
        parts.append(table)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def analysis_table(jobs: list[JobRecord]) -> pd.DataFrame:
    """Per method: mean over jobs of the scalar analysis metrics."""
    rows = []
    for job in jobs:
        if not job.ok:
            continue
        for label, block in ((job.metrics or {}).get("analysis") or {}).items():
            if not isinstance(block, dict) or label not in job.rows:
                continue
            row = {"method": job.rows[label].method, "job": job.job, "seed": job.seed}
            # Error attribution: share of rank-1 errors on a high-preference negative.
            if isinstance(block.get("share_high_preference"), (int, float)):
                row["share_high_preference"] = block["share_high_preference"]
            if isinstance(block.get("interference_rate"), (int, float)):
                row["interference_rate"] = block["interference_rate"]
            discrepancy = block.get("reward_discrepancy") or {}
            for stat in ("mean", "std"):
                if isinstance(discrepancy.get(stat), (int, float)):
                    row[f"reward_discrepancy_{stat}"] = discrepancy[stat]
            if len(row) > 3:
                rows.append(row)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    values = [c for c in frame.columns if c not in ("method", "job", "seed")]
    table = frame.groupby("method", sort=False)[values].mean()
    table.insert(0, "jobs", frame.groupby("method", sort=False)["job"].nunique())
    table = table.reset_index()
    table["_rank"] = table["method"].map(method_rank)
    return table.sort_values("_rank").drop(columns="_rank").reset_index(drop=True)
