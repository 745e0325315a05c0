"""Per-sample statistics of a sweep: 95% intervals of each method's metrics, and paired
comparisons of each method with its base in eapo_exp.methods (EAPO/DPO, EA-X/X, β-X/X),
with SFT, and with any reference asked for as an extra pair (e.g. S-DPO against DPO, for a
paper's ordering of methods).

Reads the predictions_<label>_<split>.jsonl every job writes (one row per evaluated sample:
index, user, target, target_rank, ...), groups them the way summarize() groups
metrics.json (split, method and every swept axis), keeps one evaluation per seed, and
pairs two groups seed by seed on the samples both ranked (same index, user and target).
Statistics and the resampling scheme: eapo_exp.report.stats.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eapo_exp.methods import METHODS
from eapo_exp.report import stats
from eapo_exp.report.grouping import (
    BASES,
    REFERENCE_DISPLAY,
    axis_columns,
    axis_label,
    hashable,
    method_rank,
    missing,
    scoped,
    sort_value,
)
from eapo_exp.report.jobs import JobRecord
from eapo_exp.report.markdown import comparisons_markdown
from eapo_exp.report.summary import find_reference, format_value

log = logging.getLogger(__name__)

# The SFT model a preference method starts from is labelled LLaRA when its prompts carry
# hybrid items (prompt.item_repr=hybrid); a sweep without an SFT row compares with that one.
SFT_STAGE_ROWS = (REFERENCE_DISPLAY, METHODS["llara"].display)

# Row kinds whose evaluation writes per-sample predictions (experts and popularity do not).
PREDICTED_KINDS = ("zero_shot", "chatrec", "sft", "preference")
INTERVAL_COLUMNS = ("split", "method", "metric", "mean", "ci_low", "ci_high", "n", "seeds")
COMPARISON_COLUMNS = ("split", "method", "reference", "metric", "difference", "ci_low",
                      "ci_high", "mcnemar_p", "verdict", "n", "seeds")
METHODS_NOTE = (
    "Paired comparisons: difference = method − reference (its base, and SFT, or LLaRA on "
    "hybrid item prompts) on the same "
    "evaluated samples, seed by seed, pooled over seeds; 95% CI from a paired bootstrap over "
    f"samples ({stats.N_RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}); McNemar p: exact "
    "two-sided test on the HR@1 discordant pairs. Verdict: better / worse when the CI "
    "excludes 0 (for HR@1 also p < 0.05), else within noise. n: distinct samples; seeds: "
    "seeds paired.")

GroupKey = tuple  # (split, method, *axis values)


@dataclass
class SweepStatistics:
    """Per-method intervals and paired comparisons of one sweep."""

    axes: list[str]
    intervals: pd.DataFrame
    comparisons: pd.DataFrame

    @classmethod
    def empty(cls, axes: list[str]) -> SweepStatistics:
        """No predictions: frames with the columns and no rows."""
        return cls(axes=axes, intervals=_ordered([], INTERVAL_COLUMNS, axes),
                   comparisons=_ordered([], COMPARISON_COLUMNS, axes))

    @property
    def note(self) -> str:
        """How the comparisons are computed ("" when there are none)."""
        return METHODS_NOTE if len(self.comparisons) else ""

    def markdown(self, split: str) -> str:
        """The paired-comparison table of one split ("" when it has none)."""
        table = self.comparisons[self.comparisons["split"] == split]
        if table.empty:
            return ""
        return comparisons_markdown(table, self.axes, title=f"Paired comparisons: {split}")


def read_predictions(path: Path) -> pd.DataFrame | None:
    """Per-sample metrics of one predictions file, indexed by sample id (index|user|target);
    None when the file is unreadable or empty."""
    ids, ranks = [], []
    try:
        with open(path) as handle:
            for line in handle:
                if not line.strip():
                    continue
                row = json.loads(line)
                ids.append(f"{row['index']}|{row.get('user')}|{row.get('target')}")
                ranks.append(int(row["target_rank"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("skipping %s (%s: %s)", path, type(error).__name__, error)
        return None
    if not ids:
        return None
    frame = pd.DataFrame(stats.sample_metrics(ranks), index=pd.Index(ids, name="sample"))
    return frame[~frame.index.duplicated()]


def _axis_value(value: Any) -> Any:
    return None if missing(value) else hashable(value)


def group_samples(jobs: list[JobRecord],
                  df: pd.DataFrame) -> tuple[list[str], dict[GroupKey, dict[Any, pd.DataFrame]]]:
    """(swept axes, {(split, method, *axes): {seed: per-sample metrics}}).

    The first job (in sweep order) with predictions gives a seed's evaluation: SFT is
    evaluated in every job of a seed, from one cached model, and counts once.
    """
    if df.empty:
        return [], {}
    axes = axis_columns(df)
    paths = {job.job: job.path for job in jobs if job.ok}
    part = scoped(df[df["kind"].isin(PREDICTED_KINDS)], axes)
    groups: dict[GroupKey, dict[Any, pd.DataFrame]] = defaultdict(dict)
    for _, row in part.iterrows():
        key = (row["split"], row["method"], *(_axis_value(row[a]) for a in axes))
        seed = "-" if missing(row["seed"]) else hashable(row["seed"])
        if seed in groups[key] or row["job"] not in paths:
            continue
        # Absent with eval.write_predictions=false: that row just gets no statistics.
        path = paths[row["job"]] / f"predictions_{row['label']}_{row['split']}.jsonl"
        scores = read_predictions(path) if path.is_file() else None
        if scores is None:
            continue
        # Only what metrics.json reports (generate mode ranks no top 5).
        groups[key][seed] = scores[[m for m in stats.METRICS if not missing(row.get(m))]]
    return axes, {key: by_seed for key, by_seed in groups.items() if by_seed}


def _stack(by_seed: dict[Any, pd.DataFrame]) -> pd.DataFrame:
    """Observations (seed, sample) of one group as rows: seed, sample, metrics."""
    return pd.concat(list(by_seed.values()), keys=list(by_seed), names=["seed"]).reset_index()


def _complete_metrics(frame: pd.DataFrame, suffixes: tuple[str, ...] = ("",)) -> list[str]:
    return [m for m in stats.METRICS
            if all(m + s in frame and frame[m + s].notna().all() for s in suffixes)]


def _key_columns(key: GroupKey, axes: list[str]) -> dict:
    return {"split": key[0], "method": key[1], **dict(zip(axes, key[2:], strict=True))}


def method_intervals(groups: dict[GroupKey, dict], axes: list[str],
                     n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """One row per (group, metric): pooled mean and its 95% percentile-bootstrap CI."""
    rows = []
    for key, by_seed in groups.items():
        stacked = _stack(by_seed)
        metrics = _complete_metrics(stacked)
        if not metrics:
            continue
        estimates = stats.mean_intervals({m: stacked[m].to_numpy() for m in metrics},
                                         stacked["sample"].to_numpy(), n_resamples)
        for metric, estimate in estimates.items():
            rows.append({**_key_columns(key, axes), "metric": metric, "mean": estimate.value,
                         "ci_low": estimate.low, "ci_high": estimate.high,
                         "n": int(stacked["sample"].nunique()), "seeds": len(by_seed)})
    return _ordered(rows, INTERVAL_COLUMNS, axes)


def paired_samples(method: dict[Any, pd.DataFrame],
                   reference: dict[Any, pd.DataFrame]) -> pd.DataFrame:
    """Rows (seed, sample) that both evaluated: columns m (method) and m_ref (reference)."""
    parts = {seed: method[seed].merge(reference[seed], how="inner", left_index=True,
                                      right_index=True, suffixes=("", "_ref"))
             for seed in method if seed in reference}
    parts = {seed: part for seed, part in parts.items() if not part.empty}
    if not parts:
        return pd.DataFrame()
    return _stack(parts)


def compare(method: dict[Any, pd.DataFrame], reference: dict[Any, pd.DataFrame],
            n_resamples: int = stats.N_RESAMPLES) -> list[dict]:
    """Per metric: difference, CI, McNemar p (HR@1 only), verdict, n samples, n seeds."""
    paired = paired_samples(method, reference)
    if paired.empty:
        return []
    metrics = _complete_metrics(paired, ("", "_ref"))
    clusters = paired["sample"].to_numpy()
    differences = stats.paired_differences(
        {m: paired[m].to_numpy() for m in metrics},
        {m: paired[m + "_ref"].to_numpy() for m in metrics}, clusters, n_resamples)
    rows = []
    for metric, estimate in differences.items():
        p_value = None
        if metric == "hr@1":
            p_value = stats.mcnemar_exact(*stats.discordant_pairs(paired["hr@1"],
                                                                  paired["hr@1_ref"]))
        rows.append({"metric": metric, "difference": estimate.value, "ci_low": estimate.low,
                     "ci_high": estimate.high, "mcnemar_p": np.nan if p_value is None else p_value,
                     "verdict": stats.verdict(estimate, p_value),
                     "n": int(paired["sample"].nunique()),
                     "seeds": int(paired["seed"].nunique())})
    return rows


def parse_pairs(pairs) -> list[tuple[str, str]]:
    """["EAPO:S-DPO", ...] -> [("EAPO", "S-DPO"), ...]: method and reference as the report
    names them. Raises ValueError naming the malformed entry."""
    parsed = []
    for pair in pairs or ():
        method, sep, reference = str(pair).partition(":")
        method, reference = method.strip(), reference.strip()
        if not sep or not method or not reference or ":" in reference:
            raise ValueError(f"pair {pair!r}: expected METHOD:REFERENCE as the report names "
                             "them, e.g. EAPO:S-DPO")
        if method == reference:
            raise ValueError(f"pair {pair!r}: a method cannot be compared with itself")
        parsed.append((method, reference))
    return parsed


def parse_axis_baselines(entries) -> list[tuple[str, Any]]:
    """["expert.data_fraction=1.0", ...] -> [("expert.data_fraction", 1.0), ...]: an axis and
    the value every other value of it is compared with. Raises ValueError naming the entry."""
    parsed = []
    for entry in entries or ():
        axis, sep, value = str(entry).partition("=")
        axis, value = axis.strip(), value.strip()
        if not sep or not axis or not value:
            raise ValueError(f"axis baseline {entry!r}: expected AXIS=VALUE as the sweep sets "
                             "it, e.g. expert.data_fraction=1.0")
        try:
            parsed.append((axis, float(value)))
        except ValueError:
            parsed.append((axis, value))
    return parsed


def _equal_axis_value(value: Any, wanted: Any) -> bool:
    if missing(value):
        return False
    if isinstance(wanted, float) and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        return float(value) == wanted
    return str(value) == str(wanted)


def _axis_baseline(row: dict, candidates: list[dict], axes: list[str], axis: str,
                   value: Any) -> dict | None:
    """The row of the same method and split at `axis` = `value`, every other axis equal;
    None when row has no value of that axis or already sits at the baseline."""
    if axis not in axes or missing(row[axis]) or _equal_axis_value(row[axis], value):
        return None
    for other in candidates:
        if other["method"] == row["method"] and _equal_axis_value(other[axis], value) and \
                all(other[a] == row[a] for a in axes if a != axis):
            return other
    return None


def _references(method: str, extra_pairs: list[tuple[str, str]] = ()) -> list[str]:
    """Its base, the extra references asked for, then SFT (once: LLaRA's base is SFT)."""
    names = [BASES[method]] if method in BASES else []
    names += [ref for name, ref in extra_pairs if name == method and ref not in names]
    if REFERENCE_DISPLAY not in names and method != REFERENCE_DISPLAY:
        names.append(REFERENCE_DISPLAY)
    return names


def _find_sft_or(row: dict, candidates: list[dict], axes: list[str], name: str) -> dict | None:
    """The `name` row; for SFT, the first SFT-stage row present other than the method itself."""
    names = SFT_STAGE_ROWS if name == REFERENCE_DISPLAY else (name,)
    for option in names:
        if option == row["method"]:
            continue
        found = find_reference(row, candidates, axes, option)
        if found is not None:
            return found
    return None


def method_comparisons(groups: dict[GroupKey, dict], axes: list[str],
                       n_resamples: int = stats.N_RESAMPLES,
                       extra_pairs: list[tuple[str, str]] = (),
                       axis_baselines: list[tuple[str, Any]] = ()) -> pd.DataFrame:
    """Every method against its base, the references `extra_pairs` give it, and SFT, on the
    same split and axis values (a reference without an axis, e.g. DPO in a U_β sweep,
    serves every value); then, for each (axis, value) of `axis_baselines`, against the same
    method at that value of the axis (e.g. EAPO with a 50%-data expert against EAPO with
    the full one). A pair or axis the sweep lacks is logged."""
    rows_by_split: dict[str, list[dict]] = defaultdict(list)
    for key in groups:
        rows_by_split[key[0]].append({**_key_columns(key, axes), "_key": key})
    present = {key[1] for key in groups}
    for method, reference in extra_pairs:
        absent = [name for name in (method, reference) if name not in present]
        if absent:
            log.warning("pair %s:%s: no predictions of %s in this sweep (methods: %s)",
                        method, reference, " or ".join(absent), ", ".join(sorted(present)))
    for axis, _ in axis_baselines:
        if axis not in axes:
            log.warning("axis baseline %s: not an axis of this sweep (axes: %s)", axis,
                        ", ".join(axes) or "none")
    rows = []
    for candidates in rows_by_split.values():
        for row in candidates:
            for name in _references(row["method"], extra_pairs):
                found = _find_sft_or(row, candidates, axes, name)
                if found is None:
                    continue
                name = found["method"]
                rows += _compared(groups, row, found, name, axes, n_resamples)
            for axis, value in axis_baselines:
                found = _axis_baseline(row, candidates, axes, axis, value)
                if found is not None:
                    name = f"{row['method']} ({axis_label(axis)} {found[axis]})"
                    rows += _compared(groups, row, found, name, axes, n_resamples)
    return _ordered(rows, COMPARISON_COLUMNS, axes)


def _compared(groups: dict[GroupKey, dict], row: dict, found: dict, name: str,
              axes: list[str], n_resamples: int) -> list[dict]:
    return [{**_key_columns(row["_key"], axes), "reference": name, **result}
            for result in compare(groups[row["_key"]], groups[found["_key"]], n_resamples)]


def _ordered(rows: list[dict], columns: tuple[str, ...], axes: list[str]) -> pd.DataFrame:
    """Frame in report order: axes after method; rows by split, method rank, axes, base
    first, SFT last, metric."""
    def reference_rank(row: dict) -> tuple:
        reference = row.get("reference")
        if reference is None or reference == BASES.get(row["method"]):
            return (0, "")
        return (2, "") if reference in SFT_STAGE_ROWS else (1, *method_rank(reference))

    def rank(row: dict) -> tuple:
        return (row["split"], method_rank(row["method"]),
                *(sort_value(row[a]) for a in axes),
                reference_rank(row), stats.METRICS.index(row["metric"]))

    return pd.DataFrame(sorted(rows, key=rank), columns=[*columns[:2], *axes, *columns[2:]])


def sweep_statistics(jobs: list[JobRecord], df: pd.DataFrame,
                     n_resamples: int = stats.N_RESAMPLES,
                     extra_pairs: list[tuple[str, str]] = (),
                     axis_baselines: list[tuple[str, Any]] = ()) -> SweepStatistics:
    """Intervals and comparisons for every split of the sweep that has predictions."""
    axes, groups = group_samples(jobs, df)
    if not groups:
        return SweepStatistics.empty(axes)
    return SweepStatistics(axes=axes, intervals=method_intervals(groups, axes, n_resamples),
                           comparisons=method_comparisons(groups, axes, n_resamples,
                                                          extra_pairs, axis_baselines))


def with_intervals(summary: pd.DataFrame, intervals: pd.DataFrame,
                   axes: list[str]) -> pd.DataFrame:
    """summary with m_ci_low / m_ci_high columns and "mean ± std [low, high]" cells for
    every (split, method, axes, metric) that has an interval."""
    if summary.empty or intervals.empty:
        return summary
    lookup = {(r["split"], r["method"], *(_axis_value(r[a]) for a in axes), r["metric"]): r
              for _, r in intervals.iterrows()}
    out = summary.copy()
    for metric in stats.METRICS:
        if f"{metric}_mean" not in out:
            continue
        lows, highs, cells = [], [], []
        for _, row in out.iterrows():
            key = (row["split"], row["method"], *(_axis_value(row[a]) for a in axes), metric)
            found = lookup.get(key)
            lows.append(np.nan if found is None else found["ci_low"])
            highs.append(np.nan if found is None else found["ci_high"])
            cells.append(row[metric] if found is None else _interval_cell(row, metric, found))
        out[metric] = cells
        out[f"{metric}_ci_low"] = lows
        out[f"{metric}_ci_high"] = highs
    return out


def _interval_cell(row: pd.Series, metric: str, interval: pd.Series) -> str:
    text = format_value(row[f"{metric}_mean"], row[f"{metric}_std"])
    return f"{text} [{interval['ci_low']:.4f}, {interval['ci_high']:.4f}]"
