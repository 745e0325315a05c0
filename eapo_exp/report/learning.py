"""Did each preference row train? The held-out preference diagnostics every preference job
writes (metrics.json preference.heldout; eapo_exp.training.heldout), one row per job, and
per summary row (method and swept axes) over its seeds.

A job trained when its held-out reward accuracy is above 0.5 with 95% confidence; a
summary row trained when every seed did. A comparison involving a row that did not train
compares models that learned no preference: it is not a method comparison.
"""

from __future__ import annotations

import math

import pandas as pd

from eapo_exp.report.grouping import axis_columns, hashable, method_rank, missing, scoped
from eapo_exp.report.jobs import JobRecord

TRAINED, NOT_TRAINED, UNKNOWN = "trained", "did not train", "no held-out diagnostics"
# metrics.json name -> the learning table's column (mean, and its interval where shown).
SHOWN = {"reward_accuracy": "held-out reward acc", "reward_margin": "margin",
         "implicit_hr@1": "implicit HR@1", "chosen_logp_change": "chosen Δlog p",
         "likelihood_hr@1": "HR@1 (held-out)"}
WITH_INTERVAL = ("reward_accuracy", "implicit_hr@1")
SUMMARY_COLUMN = "held-out reward acc"
LEARNING_NOTE = (
    "After training, on held-out validation samples (each target against all its other "
    "candidates): reward accuracy = share of pairs whose implicit reward (log πθ − log πref) "
    "ranks the target above the negative; margin in nats (no β); implicit HR@1 ranks all "
    "candidates by that reward; chosen Δlog p = the target title's log-prob change (large "
    "negative: likelihood displacement); HR@1 (held-out) = the policy's own ranking. "
    "[95% bootstrap CI over samples.]")


def _heldout(job: JobRecord) -> dict | None:
    found = ((job.metrics or {}).get("preference") or {}).get("heldout")
    return found if isinstance(found, dict) and isinstance(found.get("after"), dict) else None


def job_learning(jobs: list[JobRecord], df: pd.DataFrame) -> pd.DataFrame:
    """One row per preference job: method, the swept axes, seed, job, status, and per shown
    metric its mean (and ci_low / ci_high) after training, plus HR@1 (held-out) before."""
    axes = axis_columns(df) if len(df) else []
    part = scoped(df[df["kind"] == "preference"], axes) if len(df) else df
    by_job = {job.job: job for job in jobs if job.ok}
    rows = []
    for _, entry in part.drop_duplicates("job").iterrows():
        job = by_job.get(entry["job"])
        if job is None:
            continue
        row = {"method": entry["method"],
               **{a: None if missing(entry[a]) else hashable(entry[a]) for a in axes},
               "seed": job.seed, "job": job.job}
        result = _heldout(job)
        if result is None:
            rows.append({**row, "status": UNKNOWN})
            continue
        after = result["after"]
        row["status"] = TRAINED if result.get("trained") else NOT_TRAINED
        row["samples"] = result.get("samples")
        for name in SHOWN:
            value = after.get(name) or {}
            for key in ("mean", "ci_low", "ci_high"):
                row[f"{name}_{key}"] = value.get(key, math.nan)
        before = (result.get("before") or {}).get("likelihood_hr@1") or {}
        row["likelihood_hr@1_before"] = before.get("mean", math.nan)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["_rank"] = frame["method"].map(method_rank)
    return frame.sort_values(["_rank", "job"]).drop(columns="_rank").reset_index(drop=True)


def group_status(statuses: list[str]) -> str:
    """A row over seeds: did not train when any seed did not, unknown when any seed has no
    diagnostics, else trained."""
    if NOT_TRAINED in statuses:
        return NOT_TRAINED
    return UNKNOWN if UNKNOWN in statuses else TRAINED


def row_learning(learning: pd.DataFrame, axes: list[str]) -> dict[tuple, dict]:
    """(method, *axis values) -> {status, seeds, not_trained (seeds), accuracy mean / ci}
    (the interval only for a single seed: seeds are pooled by their mean)."""
    if learning.empty:
        return {}
    keys = ["method", *axes]
    grouped = {}
    for key, group in learning.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        key = tuple(None if missing(v) else v for v in key)
        statuses = list(group["status"])
        accuracy = group.get("reward_accuracy_mean", pd.Series(dtype=float)).dropna()
        entry = {"status": group_status(statuses), "seeds": len(group),
                 "not_trained": statuses.count(NOT_TRAINED),
                 "accuracy": float(accuracy.mean()) if len(accuracy) else math.nan}
        if len(group) == 1 and "reward_accuracy_ci_low" in group:
            entry["ci"] = (float(group["reward_accuracy_ci_low"].iloc[0]),
                           float(group["reward_accuracy_ci_high"].iloc[0]))
        grouped[key] = entry
    return grouped


def learning_cell(entry: dict) -> str:
    """The summary table's held-out cell of one preference row."""
    if entry["status"] == UNKNOWN:
        return UNKNOWN
    text = f"{entry['accuracy']:.3f}"
    if "ci" in entry and not any(map(math.isnan, entry["ci"])):
        text += f" [{entry['ci'][0]:.3f}, {entry['ci'][1]:.3f}]"
    if entry["status"] == NOT_TRAINED:
        seeds = (f" ({entry['not_trained']}/{entry['seeds']} seeds)" if entry["seeds"] > 1
                 else "")
        text = f"did not train{seeds}: {text}"
    return text


def with_learning(summary: pd.DataFrame, learning: pd.DataFrame,
                  axes: list[str]) -> pd.DataFrame:
    """summary with SUMMARY_COLUMN after hr@1: each preference row's held-out reward
    accuracy (and the did-not-train flag), "-" for rows that are not preference rows."""
    lookup = row_learning(learning, axes)
    if summary.empty or not lookup:
        return summary
    cells = []
    for _, row in summary.iterrows():
        key = (row["method"], *(None if missing(row[a]) else hashable(row[a]) for a in axes))
        entry = lookup.get(key)
        cells.append("-" if entry is None else learning_cell(entry))
    out = summary.copy()
    columns = list(out.columns)
    position = columns.index("hr@1_gain") + 1 if "hr@1_gain" in columns else len(columns)
    out.insert(position, SUMMARY_COLUMN, cells)
    return out


def untrained_note(learning: pd.DataFrame, axes: list[str]) -> str:
    """The line printed above the comparisons: which rows did not train or cannot tell
    ("" when every preference row trained)."""
    lookup = row_learning(learning, axes)
    names = {status: [_row_name(key, axes) for key, entry in lookup.items()
                      if entry["status"] == status] for status in (NOT_TRAINED, UNKNOWN)}
    lines = []
    if names[NOT_TRAINED]:
        lines.append(
            f"**Did not train: {', '.join(names[NOT_TRAINED])}.** Held-out reward accuracy "
            "is not above 0.5 with 95% confidence, so these preference stages learned no "
            "preference: their comparisons below compare copies of their starting model, "
            "not methods.")
    if names[UNKNOWN]:
        lines.append(
            f"**No held-out preference diagnostics: {', '.join(names[UNKNOWN])}** (jobs "
            "written before they existed, or train.preference.heldout_samples=0): whether "
            "these preference stages trained is unknown, and so is what their comparisons "
            "mean.")
    return "\n\n".join(lines)


def _row_name(key: tuple, axes: list[str]) -> str:
    extra = [f"{axis}={value}" for axis, value in zip(axes, key[1:], strict=True)
             if value is not None]
    return f"{key[0]} ({', '.join(extra)})" if extra else str(key[0])


def learning_markdown(learning: pd.DataFrame, axes: list[str]) -> str:
    """Per preference job: the held-out diagnostics after training and its status."""
    if learning.empty:
        return ""
    shown_axes = [a for a in axes if a in learning and learning[a].notna().any()]
    header = ["method", *shown_axes, "seed", *SHOWN.values(), "HR@1 (held-out) before",
              "status"]
    lines = ["### Preference learning (held-out validation pairs)", "", LEARNING_NOTE, "",
             "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for _, row in learning.iterrows():
        cells = [str(row["method"]), *["-" if missing(row[a]) else str(row[a])
                                       for a in shown_axes],
                 "-" if missing(row["seed"]) else str(row["seed"])]
        if row["status"] == UNKNOWN:
            cells += ["-"] * (len(SHOWN) + 1)
        else:
            for name in SHOWN:
                text = f"{row[f'{name}_mean']:+.3f}" if name.endswith(("margin", "change")) \
                    else f"{row[f'{name}_mean']:.3f}"
                if name in WITH_INTERVAL:
                    text += f" [{row[f'{name}_ci_low']:.3f}, {row[f'{name}_ci_high']:.3f}]"
                cells.append(text)
            cells.append(f"{row['likelihood_hr@1_before']:.3f}")
        cells.append(str(row["status"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
