"""Shared pieces of the report's figures: Agg figures without pyplot, saving, legend labels."""

from __future__ import annotations

from pathlib import Path

# Figure objects render with the Agg canvas without pyplot, so importing this module
# never switches the backend of the calling process (e.g. a notebook).
from matplotlib.figure import Figure

from eapo_exp.methods import expert_display
from eapo_exp.report.grouping import axis_label, method_rank, missing

DPI = 100


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    return path


def new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.0):
    fig = Figure(figsize=(width * ncols, height))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def group_label(method: str, axes: dict) -> str:
    extra = ", ".join(f"{axis_label(k)}={v}" for k, v in axes.items()
                      if not missing(v) and str(v) != "" and expert_display(str(v)) != method)
    return f"{method} ({extra})" if extra else method


def sorted_groups(groups: dict) -> list:
    return sorted(groups.items(), key=lambda kv: (method_rank(kv[0].split(" (")[0]), kv[0]))
