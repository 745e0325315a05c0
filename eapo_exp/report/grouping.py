"""What splits and orders the rows of a collected sweep: the swept axes (config columns that
vary and that a row's result depends on), method order and bases from eapo_exp.methods,
and the value helpers every table shares."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from eapo_exp.methods import CONFIG_KEYS, METHODS, REFERENCE, report_order
from eapo_exp.report.jobs import BASE_COLUMNS, CONFIG_COLUMNS, CORE_METRICS, ITEM_EXPERT_FRACTION

SPLIT_ORDER = ("test", "valid", "test_user_cold", "test_item_cold")
# Axes that never split a summary row: the seed is averaged over, the method is the row,
# the thread count changes how fast a job runs, not what it computes. An experiment file is
# a bundle of settings: rows split by the settings that vary (the known axes, overrides),
# not by its name, so one report can join sweeps of experiments that extend one another
# (cpu_long and cpu_long_u_beta: DPO from the first is the base of every U_β of the second).
NON_AXES = {"seed", "loss", "loss.name", "beta_schedule", "beta_schedule.name", "stage",
            "torch_threads", "experiment"}
NON_AXIS_PREFIXES = ("hydra", "paths", "logger")
# Always treated as axes when they vary, even without an override (e.g. set by an
# experiment file).
KNOWN_AXES = ("beta_schedule.u_beta", "expert.data_fraction", ITEM_EXPERT_FRACTION)
AXIS_LABELS = {"beta_schedule.u_beta": "U_β", "expert.data_fraction": "expert data",
               ITEM_EXPERT_FRACTION: "item expert data"}

ROW_ORDER = report_order()
# Display label -> the display label of the method it improves on; every method is also
# compared with REFERENCE_DISPLAY.
BASES = {m.display: METHODS[m.base].display for m in METHODS.values() if m.base}
REFERENCE_DISPLAY = METHODS[REFERENCE].display
_READ_KEYS = tuple(key for keys in CONFIG_KEYS.values() for key in keys)


def method_rank(name: str) -> tuple:
    return (ROW_ORDER.index(name), "") if name in ROW_ORDER else (len(ROW_ORDER), name)


def axis_label(axis: str) -> str:
    """An axis as table headers and legends name it."""
    return AXIS_LABELS.get(axis, axis)


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def sort_value(value: Any) -> tuple:
    if missing(value):
        return (0, 0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, float(value), "")
    return (2, 0, str(value))


def split_names(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["split"])) if len(df) else []
    return [s for s in SPLIT_ORDER if s in present] + [s for s in present if s not in SPLIT_ORDER]


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
        if scoped(df, [column])[column].dropna().map(hashable).nunique() > 1:
            axes.append(column)
    return axes


def _related(column: str, key: str) -> bool:
    """column is the config key, inside it, or a group holding it (`train` holds train.sft)."""
    return column == key or column.startswith(key + ".") or key.startswith(column + ".")


def depends(depends_on: Any, column: str) -> bool:
    """Whether a row with these artifacts (a depends_on cell) can change with `column`.
    A column no artifact reads (seed, an unknown override) counts for every row."""
    if missing(depends_on) or not any(_related(column, key) for key in _READ_KEYS):
        return True
    keys = [key for kind in str(depends_on).split() for key in CONFIG_KEYS.get(kind, ())]
    return any(_related(column, key) for key in keys)


def scoped(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Copy of df where axis values a row does not depend on are blanked (None)."""
    out = df.copy()
    cells = df["depends_on"] if "depends_on" in df else [None] * len(df)
    for column in columns:
        mask = [not depends(cell, column) for cell in cells]
        if any(mask):
            out[column] = out[column].astype(object)
            out.loc[np.asarray(mask, dtype=bool), column] = None
    return out
