"""The sweep report as markdown: per split the summary table and its paired comparisons,
the analysis table, and the jobs that gave no results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from eapo_exp.report.grouping import axis_label, hashable, missing, sort_value, split_names
from eapo_exp.report.jobs import JobRecord
from eapo_exp.report.learning import SUMMARY_COLUMN, learning_markdown, untrained_note
from eapo_exp.report.summary import analysis_table

if TYPE_CHECKING:
    from eapo_exp.report.comparisons import SweepStatistics


def summary_markdown(summary: pd.DataFrame, title: str = "", digits: int = 4) -> str:
    """Markdown table of a summarize() frame (display strings, axes, seeds, n)."""
    if summary.empty:
        return (f"### {title}\n\n" if title else "") + "_no results_"
    metrics = [c for c in summary.columns if f"{c}_mean" in summary.columns]
    axes = [c for c in summary.columns
            if c not in ("split", "method", "seeds", "n", SUMMARY_COLUMN) and c not in metrics
            and not c.endswith(("_mean", "_std", "_gain", "_ci_low", "_ci_high"))]
    if SUMMARY_COLUMN in summary.columns:  # beside HR@1
        metrics.insert(metrics.index("hr@1") + 1 if "hr@1" in metrics else 0, SUMMARY_COLUMN)
    header = ["method", *[axis_label(a) for a in axes], *metrics, "seeds", "n"]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for _, row in summary.iterrows():
        cells = [str(row["method"])]
        cells += ["-" if missing(row[a]) else str(row[a]) for a in axes]
        cells += [str(row[m]) for m in metrics]
        cells += [str(row["seeds"]), "-" if missing(row["n"]) else str(row["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _analysis_markdown(jobs: list[JobRecord]) -> list[str]:
    analysis = analysis_table(jobs)
    if analysis.empty:
        return []
    lines = ["### Analysis (mean over jobs)", "",
             "| " + " | ".join(analysis.columns) + " |",
             "|" + "|".join(["---"] * len(analysis.columns)) + "|"]
    for _, row in analysis.iterrows():
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_markdown(root: Path, df: pd.DataFrame, summary: pd.DataFrame, problems: list[dict],
                    jobs: list[JobRecord], split: str = "test",
                    stats: SweepStatistics | None = None,
                    learning: pd.DataFrame | None = None, axes: list[str] = ()) -> str:
    """The report; `stats` adds each split's paired comparisons, `learning`
    (eapo_exp.report.learning.job_learning, rows keyed by `axes`) whether each preference
    row trained."""
    ok = [job for job in jobs if job.ok]
    seeds = sorted({hashable(job.seed) for job in ok if job.seed is not None}, key=sort_value)
    lines = [f"# Sweep report: {root}", "",
             (f"{len(jobs)} job(s): {len(ok)} with results, {len(problems)} failed or missing. "
              f"Seeds: {', '.join(map(str, seeds)) or '-'} ({len(seeds)}). "
              "Cells are mean ± std over seeds (std with ddof=1, shown only with ≥2 seeds) "
              "and, where per-sample predictions exist, [95% CI] of the mean: percentile "
              "bootstrap over test samples, pooled over seeds. n: test samples per seed."),
             ""]
    learning = learning if learning is not None else pd.DataFrame()
    note = untrained_note(learning, list(axes))
    if note:
        lines += [note, ""]
    if stats is not None and stats.note:
        lines += [stats.note, ""]
    splits = split_names(df)
    ordered = [split] + [s for s in splits if s != split] if split in splits else splits
    if split not in splits and len(df):
        lines += [f"_split {split!r} not found; available: {', '.join(splits)}_", ""]
    for name in ordered:
        table = summary[summary["split"] == name].drop(columns="split")
        lines += [summary_markdown(table, title=f"Split: {name}"), ""]
        section = stats.markdown(name) if stats is not None else ""
        lines += [section, ""] if section else []
    section = learning_markdown(learning, list(axes))
    lines += [section, ""] if section else []
    lines += _analysis_markdown(jobs)
    lines.append(f"### Failed or missing jobs ({len(problems)})")
    lines.append("")
    lines += [f"- `{p['job']}`: {p['reason']}" for p in problems] or ["none"]
    return "\n".join(lines)


def format_p(p_value: float) -> str:
    if missing(p_value):
        return "-"
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def comparisons_markdown(table: pd.DataFrame, axes: list[str], title: str = "") -> str:
    """Markdown of method_comparisons() rows: one line per (method, reference, metric)."""
    shown = [a for a in axes if a in table and table[a].map(lambda v: not missing(v)).any()]
    header = ["method", *[axis_label(a) for a in shown], "vs", "metric", "difference", "95% CI",
              "McNemar p", "verdict", "n", "seeds"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for _, row in table.iterrows():
        cells = [str(row["method"]), *["-" if missing(row[a]) else str(row[a]) for a in shown],
                 str(row["reference"]), str(row["metric"]), f"{row['difference']:+.4f}",
                 f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]", format_p(row["mcnemar_p"]),
                 str(row["verdict"]), str(row["n"]), str(row["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
