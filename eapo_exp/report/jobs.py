"""Collect a Hydra sweep (or a single run dir): one row per (job, result row, split).

A job directory is any directory under the sweep dir holding `.hydra/` or `metrics.json`.
What each result row is (its method and the artifacts its result depends on) is read from
metrics.json's "provenance" (eapo_exp.pipeline.record_row); jobs written before it existed
get it from their eval labels and config, in `legacy_provenance`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from eapo_exp.errors import EapoError
from eapo_exp.methods import METHODS, Method, expert_display, preference_method

CORE_METRICS = ("hr@1", "hr@5", "ndcg@5")
# Per-evaluation timing and truncation counters: logged per job, not summarised as metrics.
BOOKKEEPING = {"seconds", "samples_per_s", "truncated_prompts", "dropped_history_items"}
# depends_on: the row's artifacts (keys of eapo_exp.methods.CONFIG_KEYS), space-separated.
BASE_COLUMNS = ("job", "method", "label", "kind", "seed", "split", "depends_on")
REPORT_DIRNAME = "report"
# Derived: the training-data share of the expert behind hybrid item slots (None without them).
ITEM_EXPERT_FRACTION = "item_expert.data_fraction"
# Config values every row carries (dotted path in config_resolved.yaml), besides overrides.
CONFIG_COLUMNS = ("loss.name", "beta_schedule.name", "beta_schedule.u_beta", "expert.name",
                  "expert.data_fraction", ITEM_EXPERT_FRACTION, "dataset.name", "backbone.name",
                  "stage")
# metrics.json blocks of the expert stage, by row label.
EXPERT_ROWS = {"expert": "expert_only", "popularity": "popularity"}


@dataclass(frozen=True)
class ResultRow:
    """What one result row of a job is."""

    method: str                     # display label
    kind: str                       # eapo_exp.methods.Method.kind
    depends_on: tuple[str, ...]


@dataclass
class JobRecord:
    """Everything read from one job directory."""

    job: str                       # path relative to the sweep dir
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metrics: dict | None = None
    rows: dict[str, ResultRow] = field(default_factory=dict)  # by eval label / block
    problem: str | None = None     # why the job gave no rows (None when it did)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def value(self, key: str) -> Any:
        """The job's value for a config path (or override key)."""
        if key == ITEM_EXPERT_FRACTION:
            if self.value("prompt.item_repr") != "hybrid":
                return None
            pinned = self.value("prompt.item_expert_data_fraction")
            return self.value("expert.data_fraction") if pinned is None else pinned
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
        """Display label of the job's preference method (None for jobs without one)."""
        return next((row.method for row in self.rows.values() if row.kind == "preference"),
                    None)


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def legacy_provenance(record: JobRecord) -> dict[str, dict]:
    """metrics.json "provenance" for a job written before it existed: a label that names a
    baseline is that baseline, any other eval label the config's loss x β schedule."""
    entries = {}
    for label, _ in _result_blocks(record.metrics or {}):
        known = METHODS.get(EXPERT_ROWS.get(label, label))
        if known is not None and known.kind != "preference":
            method = known
        elif record.value("loss.name"):
            method = preference_method(str(record.value("loss.name")),
                                       str(record.value("beta_schedule.name") or "fixed"))
        else:
            method = _method(label)
        entries[label] = {"method": method.name, "depends_on": list(method.depends_on)}
    return entries


def _method(name: str) -> Method:
    if name not in METHODS:
        raise EapoError(f"method {name!r} is not in eapo_exp.methods.METHODS")
    return METHODS[name]


def read_rows(record: JobRecord) -> dict[str, ResultRow]:
    """What each of the job's result rows is, by label."""
    metrics = record.metrics or {}
    written = metrics.get("provenance")
    entries = written if isinstance(written, dict) else legacy_provenance(record)
    missing = [label for label, _ in _result_blocks(metrics) if label not in entries]
    if missing:
        raise EapoError(f"metrics.json provenance lacks {', '.join(missing)}")
    rows = {}
    for label, entry in entries.items():
        method = _method(entry["method"])
        display = method.display
        if method.kind == "expert":
            display = expert_display(str((metrics.get("expert") or {}).get("name")
                                         or record.value("expert.name") or method.display))
        rows[label] = ResultRow(display, method.kind,
                                _item_inputs(record, method, entry["depends_on"]))
    return rows


def _item_inputs(record: JobRecord, method: Method, depends_on: list[str]) -> tuple[str, ...]:
    """depends_on with hybrid item slots read as item_expert: a job written before that kind
    existed recorded them as "expert", which only a method using the expert's scores
    (EAPO, the expert row) reads itself."""
    kinds = list(depends_on)
    if record.value("prompt.item_repr") == "hybrid" and method.kind in ("sft", "preference"):
        if "expert" in kinds and "expert" not in method.depends_on:
            kinds.remove("expert")
        kinds += [] if "item_expert" in kinds else ["item_expert"]
    return tuple(kinds)


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
    try:
        record.rows = read_rows(record)
    except (EapoError, KeyError, TypeError) as error:
        record.problem = f"unknown result rows ({type(error).__name__}: {error})"
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


def _result_blocks(metrics: dict) -> list[tuple[str, Any]]:
    """(label, block) of every result in metrics.json: evaluations, then the expert stage's."""
    return [*(metrics.get("eval") or {}).items(),
            *((label, metrics[label]) for label in EXPERT_ROWS
              if isinstance(metrics.get(label), dict))]


def _job_rows(record: JobRecord) -> list[dict]:
    rows = []
    for label, block in _result_blocks(record.metrics or {}):
        what = record.rows[label]
        for split, values in _split_results(block).items():
            row = {"job": record.job, "method": what.method, "label": label, "kind": what.kind,
                   "seed": record.seed, "split": split, "depends_on": " ".join(what.depends_on)}
            row.update({k: v for k, v in values.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
            rows.append(row)
    return rows


def collect_jobs(sweep_dir: str | os.PathLike) -> tuple[pd.DataFrame, list[dict]]:
    """One row per (job, result row, split), plus [{job, reason}] for jobs without rows.

    Columns: BASE_COLUMNS, the metrics (hr@1, hr@5, ndcg@5, n and any other numeric metric
    found), every override key and the CONFIG_COLUMNS values. Override/config columns hold
    the resolved config value where the config has one.
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
