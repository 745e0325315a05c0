"""Build the report of a Hydra sweep (or a single run dir): collect the jobs
(eapo_exp.report.jobs), summarise them over seeds (summary), add what the per-sample
predictions allow (comparisons: 95% intervals per method, paired comparisons with a
verdict), and write the tables and the markdown (markdown)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from eapo_exp.report.comparisons import sweep_statistics, with_intervals
from eapo_exp.report.grouping import axis_columns
from eapo_exp.report.jobs import REPORT_DIRNAME, rows_from_jobs, scan_jobs
from eapo_exp.report.learning import job_learning, with_learning
from eapo_exp.report.markdown import render_markdown
from eapo_exp.report.summary import summarize_all

log = logging.getLogger(__name__)


def build_report(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 split: str = "test", pairs: list[tuple[str, str]] = (),
                 axis_baselines: list[tuple[str, Any]] = ()) -> dict:
    """Collect, summarize and write report.csv, summary.csv, summary.md, comparisons.csv
    (paired comparisons; empty without per-sample predictions) and learning.csv (held-out
    preference diagnostics per preference job). `pairs`: (method, reference) comparisons to add to each method's base and SFT (comparisons.parse_pairs);
    `axis_baselines`: (axis, value) to compare every other value of the axis with, method
    by method (comparisons.parse_axis_baselines).

    Returns {"df", "summary" (all splits, with 95% intervals where predictions exist, and
    each preference row's held-out reward accuracy), "stats" (comparisons.SweepStatistics),
    "problems", "jobs", "learning" (learning.job_learning: whether each preference job
    trained), "markdown", "files", "out_dir"}. The markdown puts `split` first, then the other splits.
    """
    root = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else root / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    jobs = scan_jobs(root)
    df, problems = rows_from_jobs(jobs)
    experiments = sorted(map(str, df["experiment"].dropna().unique())) if "experiment" in df \
        else []
    if len(experiments) > 1:
        log.warning("one report over experiments %s: rows are split by the settings the jobs "
                    "vary (%s), not by experiment; report sweeps of unrelated recipes apart",
                    ", ".join(experiments), ", ".join(axis_columns(df)) or "none")
    stats = sweep_statistics(jobs, df, extra_pairs=pairs, axis_baselines=axis_baselines)
    axes = axis_columns(df) if len(df) else []
    learning = job_learning(jobs, df)
    summary = with_learning(with_intervals(summarize_all(df), stats.intervals, stats.axes),
                            learning, axes)
    markdown = render_markdown(root, df, summary, problems, jobs, split, stats, learning,
                               axes)
    files = [out / "report.csv", out / "summary.csv", out / "summary.md",
             out / "comparisons.csv", out / "learning.csv"]
    df.to_csv(files[0], index=False)
    summary.to_csv(files[1], index=False)
    files[2].write_text(markdown + "\n")
    stats.comparisons.to_csv(files[3], index=False)
    learning.to_csv(files[4], index=False)
    return {"df": df, "summary": summary, "stats": stats, "problems": problems, "jobs": jobs,
            "learning": learning, "markdown": markdown, "files": files, "out_dir": out}
