"""Aggregate a Hydra sweep (or a single run dir) into one long table and a summary.

A job directory is any directory under the sweep dir holding `.hydra/` or `metrics.json`.
`collect_jobs` turns every (job, eval label, split) into one row; `summarize` averages the
rows of one split over seeds. `build_report` adds what the per-sample predictions allow
(eapo_exp.report.comparisons): 95% intervals per method and paired comparisons with a verdict.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml

from eapo_exp import methods

if TYPE_CHECKING:
    from eapo_exp.report.comparisons import SweepStatistics

CORE_METRICS = ("hr@1", "hr@5", "ndcg@5")
# Per-evaluation timing and truncation counters: logged per job, not summarised as metrics.
BOOKKEEPING = {"seconds", "samples_per_s", "truncated_prompts", "dropped_history_items"}
BASE_COLUMNS = ("job", "method", "label", "kind", "seed", "split")
SPLIT_ORDER = ("test", "valid", "test_user_cold", "test_item_cold")
REPORT_DIRNAME = "report"

# Lower-cased eval labels a preference job may use, when the job's own name can't be used.
LABEL_NAMES = {"sft": "SFT", "zero_shot": "Zero-shot", "dpo": "DPO", "beta_dpo": "β-DPO",
               "eapo": "EAPO", "sdpo": "S-DPO", "ea_sdpo": "EA-SDPO", "ea-sdpo": "EA-SDPO",
               "ipo": "IPO", "ea_ipo": "EA-IPO", "ea-ipo": "EA-IPO", "cpo": "CPO",
               "ea_cpo": "EA-CPO", "ea-cpo": "EA-CPO"}
EXPERT_NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser",
                "popularity": "Popularity"}
# Expert-guided variant -> the method it is compared against.
GAIN_PAIRS = {"EAPO": "DPO", "EA-SDPO": "S-DPO", "EA-IPO": "IPO", "EA-CPO": "CPO"}
METHOD_ORDER = ("Popularity", "GRU4Rec", "Caser", "SASRec", "Zero-shot", "SFT", "DPO", "β-DPO",
                "EAPO", "S-DPO", "EA-SDPO", "IPO", "EA-IPO", "CPO", "EA-CPO")

# Config values every row carries (dotted path in config_resolved.yaml), besides overrides.
CONFIG_COLUMNS = ("loss.name", "beta_schedule.name", "beta_schedule.u_beta", "expert.name",
                  "expert.data_fraction", "dataset.name", "backbone.name", "stage")
# Axes that never split a summary row: the seed is averaged over, the method is the row.
NON_AXES = {"seed", "loss", "loss.name", "beta_schedule", "beta_schedule.name", "stage"}
NON_AXIS_PREFIXES = ("hydra", "paths", "logger")
# Always treated as axes when they vary, even without an override (e.g. set by an
# experiment file).
KNOWN_AXES = ("beta_schedule.u_beta", "expert.data_fraction")
# Config groups that cannot change a row of this kind: a sweep over them must not split it.
IRRELEVANT = {
    "expert": ("loss", "beta_schedule", "backbone", "train", "eval", "prompt"),
    "popularity": ("loss", "beta_schedule", "backbone", "train", "eval", "prompt", "expert"),
    "sft": ("loss", "beta_schedule", "expert", "train.preference"),
    "zero_shot": ("loss", "beta_schedule", "expert", "train"),
    "preference": (),
}


@dataclass
class JobRecord:
    """Everything read from one job directory."""

    job: str                       # path relative to the sweep dir
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict | None = None
    problem: str | None = None     # why the job gave no rows (None when it did)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def value(self, key: str) -> Any:
        """The job's value for a config path (or override key)."""
        found = _lookup(self.config, key)
        if isinstance(found, dict):
            found = found.get("name")
        if found is None and key in self.overrides:
            found = self.overrides[key]
        return found

    @property
    def seed(self) -> Any:
        return self.value("seed")

    @property
    def method(self) -> str | None:
        """Display name of the job's preference method (None for SFT/expert-only jobs)."""
        labels = [label for label in ((self.metrics or {}).get("eval") or {})
                  if _label_kind(label) == "preference"]
        if self.metrics and self.metrics.get("method"):
            return str(self.metrics["method"])
        derived = method_name(self.value("loss.name"), self.value("beta_schedule.name"))
        if labels and len(labels) == 1:
            return derived or LABEL_NAMES.get(labels[0].lower(), labels[0])
        stage = str(self.value("stage") or "")
        return derived if stage in ("preference", "all") or labels else None


def method_name(loss: str | None, schedule: str | None) -> str | None:
    """Display name of a loss × β-schedule pair (dpo+expert -> EAPO); None without a loss."""
    if not loss:
        return None
    return methods.method_name(str(loss), str(schedule or "fixed"))


def expert_display(name: str | None) -> str:
    name = str(name or "expert")
    return EXPERT_NAMES.get(name.lower(), name)


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _label_kind(label: str) -> str:
    return label if label in ("sft", "zero_shot") else "preference"


def _parse_overrides(lines: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in lines or []:
        item = str(item)
        if "=" not in item or item.startswith("~"):
            continue
        key, raw = item.split("=", 1)
        key = key.lstrip("+").split("@", 1)[0]
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError:
            value = raw
        parsed[key] = value if isinstance(value, (str, int, float, bool)) or value is None \
            else raw
    return parsed


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def find_job_dirs(sweep_dir: str | os.PathLike) -> list[Path]:
    """Job directories under sweep_dir (the dir itself when it is a single run)."""
    root = Path(sweep_dir)
    if (root / ".hydra").is_dir() or (root / "metrics.json").is_file():
        return [root]
    found = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        if here != root and ((here / ".hydra").is_dir() or "metrics.json" in files):
            found.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and d not in (REPORT_DIRNAME, "wandb"))
    return sorted(found, key=_natural_key(root))


def _natural_key(root: Path):
    def key(path: Path):
        rel = path.relative_to(root).as_posix()
        head = rel.split("_", 1)[0]
        return (int(head), rel) if head.isdigit() else (math.inf, rel)
    return key


def read_job(root: Path, path: Path) -> JobRecord:
    rel = path.relative_to(root).as_posix() if path != root else path.name
    record = JobRecord(job=rel, path=path)
    record.overrides = _parse_overrides(_read_yaml(path / ".hydra" / "overrides.yaml"))
    config = _read_yaml(path / "config_resolved.yaml")
    if not isinstance(config, dict):
        config = _read_yaml(path / ".hydra" / "config.yaml")
    record.config = config if isinstance(config, dict) else {}
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        record.problem = "missing metrics.json (job still running, killed, or crashed)"
        return record
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as error:
        record.problem = f"unreadable metrics.json ({type(error).__name__}: {error})"
        return record
    if not isinstance(metrics, dict):
        record.problem = "unreadable metrics.json (not a JSON object)"
        return record
    record.metrics = metrics
    status = metrics.get("status", "ok")
    if status != "ok":
        error = str(metrics.get("error") or "no error message").splitlines()[0]
        record.problem = f"status {status}: {error}"
    return record


def scan_jobs(sweep_dir: str | os.PathLike) -> list[JobRecord]:
    root = Path(sweep_dir)
    return [read_job(root, path) for path in find_job_dirs(root)]


def _split_results(block: Any) -> dict[str, dict]:
    """The {split: metrics} entries of an eval block (skips name/artifact/training keys)."""
    if not isinstance(block, dict):
        return {}
    return {split: values for split, values in block.items()
            if isinstance(values, dict) and split != "training"
            and any(isinstance(values.get(m), (int, float)) for m in CORE_METRICS)}


def _job_rows(record: JobRecord) -> list[dict]:
    metrics = record.metrics or {}
    blocks: list[tuple[str, str, str, dict]] = []  # (label, kind, method, {split: metrics})
    for label, block in (metrics.get("eval") or {}).items():
        kind = _label_kind(label)
        if kind == "preference":
            labels = [lb for lb in metrics["eval"] if _label_kind(lb) == "preference"]
            name = record.method if len(labels) == 1 else None
            name = name or LABEL_NAMES.get(label.lower(), label)
        else:
            name = LABEL_NAMES[label]
        blocks.append((label, kind, name, _split_results(block)))
    if isinstance(metrics.get("expert"), dict):
        name = metrics["expert"].get("name") or record.value("expert.name")
        blocks.append(("expert", "expert", expert_display(name),
                       _split_results(metrics["expert"])))
    if isinstance(metrics.get("popularity"), dict):
        blocks.append(("popularity", "popularity", "Popularity",
                       _split_results(metrics["popularity"])))
    rows = []
    for label, kind, name, splits in blocks:
        for split, values in splits.items():
            row = {"job": record.job, "method": name, "label": label, "kind": kind,
                   "seed": record.seed, "split": split}
            row.update({k: v for k, v in values.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
            rows.append(row)
    return rows


def collect_jobs(sweep_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[dict]]:
    """One row per (job, eval label, split), plus [{job, reason}] for jobs without rows.

    Columns: job, method, label, kind, seed, split, the metrics (hr@1, hr@5, ndcg@5, n and
    any other numeric metric found), every override key and the CONFIG_COLUMNS values.
    Override/config columns hold the resolved config value where the config has one.
    """
    return rows_from_jobs(scan_jobs(sweep_dir))


def rows_from_jobs(jobs: list[JobRecord]) -> tuple[pd.DataFrame, list[dict]]:
    rows: list[dict] = []
    row_values: list[dict] = []
    problems: list[dict] = []
    keys = list(dict.fromkeys(k for job in jobs for k in job.overrides))
    value_columns = list(dict.fromkeys([*keys, *CONFIG_COLUMNS]))
    value_columns = [c for c in value_columns if c not in BASE_COLUMNS]
    for job in jobs:
        if not job.ok:
            problems.append({"job": job.job, "reason": job.problem})
            continue
        job_rows = _job_rows(job)
        if not job_rows:
            stage = job.value("stage")
            where = f" (stage={stage})" if stage else ""
            problems.append({"job": job.job, "reason": f"no evaluation results{where}"})
            job.problem = problems[-1]["reason"]
        rows.extend(job_rows)
        values = {column: job.value(column) for column in value_columns}
        row_values.extend([values] * len(job_rows))
    found = [c for c in _metric_columns(rows) if c not in value_columns]
    rows = [{**row, **values} for row, values in zip(rows, row_values, strict=True)]
    columns = [*BASE_COLUMNS, *found, *value_columns]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["metric_columns"] = [c for c in found if c != "n"]
    frame.attrs["value_columns"] = value_columns
    return frame, problems


def _metric_columns(rows: list[dict]) -> list[str]:
    seen = dict.fromkeys(k for row in rows for k in row)
    skip = set(BASE_COLUMNS) | {"n"} | BOOKKEEPING
    extras = [k for k in seen if k not in skip and k not in CORE_METRICS]
    return [*CORE_METRICS, "n", *extras]


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Metric columns of a collect_jobs frame (without n), core metrics first."""
    known = df.attrs.get("metric_columns")
    if known is None:  # e.g. a frame read back from report.csv
        known = [c for c in df.columns if "@" in c or c.endswith("_ratio")]
    present = [c for c in known if c in df.columns and c != "n" and df[c].notna().any()]
    return [m for m in CORE_METRICS if m in present] + \
        [c for c in present if c not in CORE_METRICS]


def _value_columns(df: pd.DataFrame) -> list[str]:
    known = df.attrs.get("value_columns")
    if known is not None:
        return [c for c in known if c in df.columns]
    metrics = set(metric_columns(df))
    return [c for c in df.columns if c not in BASE_COLUMNS and c != "n" and c not in metrics]


def axis_columns(df: pd.DataFrame) -> list[str]:
    """Override/config columns that vary across the sweep (and so split summary rows)."""
    axes = []
    for column in _value_columns(df):
        if column in NON_AXES or column.split(".", 1)[0] in NON_AXIS_PREFIXES:
            continue
        if column in CONFIG_COLUMNS and column not in KNOWN_AXES:
            continue  # e.g. expert.name: only an axis when its group override varies
        if _scoped(df, [column])[column].dropna().map(_hashable).nunique() > 1:
            axes.append(column)
    return axes


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _irrelevant(kind: str, column: str, schedule: Any) -> bool:
    prefixes = IRRELEVANT.get(kind, ())
    if kind == "preference" and schedule != "expert":
        prefixes = ("expert",)  # only the expert β-schedule reads the expert
    return any(column == p or column.startswith(p + ".") for p in prefixes)


def _scoped(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Copy of df where axis values that cannot affect a row's kind are blanked (NaN)."""
    out = df.copy()
    schedules = df["beta_schedule.name"] if "beta_schedule.name" in df else [None] * len(df)
    for column in columns:
        mask = [_irrelevant(kind, column, schedule)
                for kind, schedule in zip(df["kind"], schedules, strict=True)]
        if any(mask):
            out[column] = out[column].astype(object)
            out.loc[np.asarray(mask, dtype=bool), column] = None
    return out


def _method_rank(name: str) -> tuple:
    return (METHOD_ORDER.index(name), "") if name in METHOD_ORDER else (len(METHOD_ORDER), name)


def _sort_value(value: Any) -> tuple:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0, str(value))


def split_names(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["split"])) if len(df) else []
    return [s for s in SPLIT_ORDER if s in present] + [s for s in present if s not in SPLIT_ORDER]


def format_value(mean: float, std: float | None, gain: float | None = None,
                 digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
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
    "mean ± std"), `m_mean`, `m_std`, `m_gain` (relative difference in % to the base
    method, for EAPO/EA-SDPO/EA-IPO/EA-CPO when the base with the same axis values is
    present; kept in the CSV only, the report judges differences by paired intervals).
    """
    axes = axis_columns(df)
    metrics = metric_columns(df)
    columns = ["method", *axes, "seeds", "n"]
    for m in metrics:
        columns += [m, f"{m}_mean", f"{m}_std", f"{m}_gain"]
    part = _scoped(df[df["split"] == split], axes) if len(df) else df
    if part.empty:
        return pd.DataFrame(columns=columns)
    part = part.copy()
    part["_seed"] = part["seed"].map(lambda s: "-" if _missing(s) else _hashable(s))
    for axis in axes:
        part[axis] = part[axis].map(lambda v: None if _missing(v) else _hashable(v))
    keys = ["method", *axes]
    numeric = [*metrics, "n"] if "n" in part else metrics
    per_seed = part.groupby([*keys, "_seed"], dropna=False, sort=False)[numeric].mean()
    per_seed = per_seed.reset_index()
    rows = []
    for key, group in per_seed.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for axis in axes:
            if _missing(row[axis]):
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
    for row in rows:
        for m in metrics:
            row[m] = format_value(row[f"{m}_mean"], row[f"{m}_std"])
    rows.sort(key=lambda r: (_method_rank(r["method"]), *(_sort_value(r[a]) for a in axes)))
    return pd.DataFrame(rows, columns=columns)


def _format_n(values: pd.Series) -> Any:
    values = values.dropna()
    if values.empty:
        return None
    mean = float(values.mean())
    return int(mean) if mean.is_integer() else round(mean, 1)


def _find_base(row: dict, rows: list[dict], axes: list[str]) -> dict | None:
    base = GAIN_PAIRS.get(row["method"])
    return None if base is None else find_reference(row, rows, axes, base)


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
        base = _find_base(row, rows, axes)
        if base is None:
            continue
        for m in metrics:
            ref, value = base[f"{m}_mean"], row[f"{m}_mean"]
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


def summary_markdown(summary: pd.DataFrame, title: str = "", digits: int = 4) -> str:
    """Markdown table of a summarize() frame (display strings, axes, seeds, n)."""
    if summary.empty:
        return (f"### {title}\n\n" if title else "") + "_no results_"
    metrics = [c for c in summary.columns if f"{c}_mean" in summary.columns]
    axes = [c for c in summary.columns
            if c not in ("split", "method", "seeds", "n") and c not in metrics
            and not c.endswith(("_mean", "_std", "_gain", "_ci_low", "_ci_high"))]
    header = ["method", *[_short(a) for a in axes], *metrics, "seeds", "n"]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for _, row in summary.iterrows():
        cells = [str(row["method"])]
        cells += ["-" if _missing(row[a]) else str(row[a]) for a in axes]
        cells += [str(row[m]) for m in metrics]
        cells += [str(row["seeds"]), "-" if _missing(row["n"]) else str(row["n"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _short(axis: str) -> str:
    return {"beta_schedule.u_beta": "U_β", "expert.data_fraction": "expert data"}.get(axis, axis)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def analysis_table(jobs: list[JobRecord]) -> pd.DataFrame:
    """Per method (and job axes): mean over jobs of the scalar analysis metrics."""
    rows = []
    for job in jobs:
        if not job.ok:
            continue
        for label, block in ((job.metrics or {}).get("analysis") or {}).items():
            if not isinstance(block, dict):
                continue
            kind = _label_kind(label)
            labels = [lb for lb in job.metrics["analysis"] if _label_kind(lb) == "preference"]
            name = job.method if kind == "preference" and len(labels) == 1 else None
            name = name or LABEL_NAMES.get(label.lower(), label)
            row = {"method": name, "job": job.job, "seed": job.seed}
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
    table["_rank"] = table["method"].map(_method_rank)
    return table.sort_values("_rank").drop(columns="_rank").reset_index(drop=True)


def build_report(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 split: str = "test") -> dict:
    """Collect, summarize and write report.csv, summary.csv, summary.md and comparisons.csv
    (paired comparisons; empty without per-sample predictions).

    Returns {"df", "summary" (all splits, with 95% intervals where predictions exist),
    "stats" (comparisons.SweepStatistics), "problems", "jobs", "markdown", "files",
    "out_dir"}. The markdown puts `split` first, then the other splits.
    """
    # comparisons builds on this module's grouping helpers, so it is imported here.
    from eapo_exp.report.comparisons import sweep_statistics, with_intervals

    root = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else root / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    jobs = scan_jobs(root)
    df, problems = rows_from_jobs(jobs)
    stats = sweep_statistics(jobs, df)
    summary = with_intervals(summarize_all(df), stats.intervals, stats.axes)
    markdown = render_markdown(root, df, summary, problems, jobs, split, stats)
    files = [out / "report.csv", out / "summary.csv", out / "summary.md",
             out / "comparisons.csv"]
    df.to_csv(files[0], index=False)
    summary.to_csv(files[1], index=False)
    files[2].write_text(markdown + "\n")
    stats.comparisons.to_csv(files[3], index=False)
    return {"df": df, "summary": summary, "stats": stats, "problems": problems, "jobs": jobs,
            "markdown": markdown, "files": files, "out_dir": out}


def render_markdown(root: Path, df: pd.DataFrame, summary: pd.DataFrame, problems: list[dict],
                    jobs: list[JobRecord], split: str = "test",
                    stats: SweepStatistics | None = None) -> str:
    """The report; `stats` adds each split's paired comparisons."""
    ok = [job for job in jobs if job.ok]
    seeds = sorted({_hashable(job.seed) for job in ok if job.seed is not None}, key=_sort_value)
    lines = [f"# Sweep report: {root}", "",
             (f"{len(jobs)} job(s): {len(ok)} with results, {len(problems)} failed or missing. "
              f"Seeds: {', '.join(map(str, seeds)) or '-'} ({len(seeds)}). "
              "Cells are mean ± std over seeds (std with ddof=1, shown only with ≥2 seeds) "
              "and, where per-sample predictions exist, [95% CI] of the mean: percentile "
              "bootstrap over test samples, pooled over seeds. n: test samples per seed."),
             ""]
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
    analysis = analysis_table(jobs)
    if not analysis.empty:
        lines += ["### Analysis (mean over jobs)", "",
                  "| " + " | ".join(analysis.columns) + " |",
                  "|" + "|".join(["---"] * len(analysis.columns)) + "|"]
        for _, row in analysis.iterrows():
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"### Failed or missing jobs ({len(problems)})")
    lines.append("")
    lines += [f"- `{p['job']}`: {p['reason']}" for p in problems] or ["none"]
    return "\n".join(lines)
