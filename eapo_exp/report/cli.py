"""`eapo-report <sweep_dir>`: tables and plots for a whole Hydra sweep (or one run dir).

Writes report.csv (every job × label × split), summary.csv, summary.md, comparisons.csv
(paired comparisons with 95% CIs and verdicts) and the plots into --out (default
<sweep_dir>/report/) and prints the markdown summary. --wandb also logs the summary and
comparison tables and plots to a W&B run of job_type "report".
"""

from __future__ import annotations

import argparse
import logging
import netrc
import os
import sys
from pathlib import Path

from eapo_exp.errors import ConfigError
from eapo_exp.report.comparisons import parse_axis_baselines, parse_pairs
from eapo_exp.report.jobs import REPORT_DIRNAME, find_job_dirs
from eapo_exp.report.sweep import build_report
from eapo_exp.tracking import resolve_wandb_mode

PROG = "eapo-report"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Aggregate a Hydra sweep of eapo-exp jobs into tables and plots.")
    parser.add_argument("sweep_dir", type=Path,
                        help="multirun dir (e.g. outputs/multirun/<date>) or a single run dir")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output dir (default: <sweep_dir>/{REPORT_DIRNAME}/)")
    parser.add_argument("--split", default="test",
                        help="split printed first and plotted (default: test)")
    parser.add_argument("--wandb", action="store_true",
                        help="also log the summary and plots to a W&B run, in the W&B mode "
                             "of the sweep's jobs (offline unless logger.mode or the user's "
                             "W&B settings say otherwise; online needs an API key)")
    parser.add_argument("--no-plots", action="store_true", help="skip the plots")
    parser.add_argument("--pair", action="append", default=[], metavar="METHOD:REFERENCE",
                        help="also compare METHOD with REFERENCE, paired (names as the report "
                             "prints them, e.g. --pair EAPO:S-DPO --pair S-DPO:DPO); each "
                             "method is always compared with its base and SFT")
    parser.add_argument("--axis-baseline", action="append", default=[], metavar="AXIS=VALUE",
                        help="also compare each method at every other value of a swept axis "
                             "with the same method at VALUE, paired (e.g. --axis-baseline "
                             "expert.data_fraction=1.0 --axis-baseline beta_schedule.u_beta=0.75)")
    return parser.parse_args(argv)


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def log_to_wandb(result: dict, plots: list[Path], sweep_dir: Path) -> str:
    """Log the summary tables and plots to W&B; returns a one-line status message."""
    logger = next((job.config["logger"] for job in result["jobs"]
                   if isinstance(job.config.get("logger"), dict)), {})
    try:
        mode = resolve_wandb_mode(logger.get("mode"))  # as the sweep's jobs resolved it
    except ConfigError as error:
        return f"W&B: {error}; skipped"
    if mode == "disabled":
        return "W&B: mode disabled; skipped"
    if mode == "online" and not _has_wandb_key():
        return ("W&B: online, but no API key (set WANDB_API_KEY or run `wandb login`; or "
                "logger.mode=offline to save the run for `wandb sync`); skipped")
    try:
        import wandb

        run = wandb.init(project=logger.get("project") or "eapo-exp",
                         entity=logger.get("entity"), group=logger.get("group"),
                         job_type="report", name=f"report:{sweep_dir.name}",
                         dir=str(result["out_dir"]), mode=mode,
                         config={"sweep_dir": str(sweep_dir)},
                         settings=wandb.Settings(init_timeout=60))
        summary = result["summary"]
        display = summary[[c for c in summary.columns if not c.endswith("_gain")]]
        payload = {"report/summary": wandb.Table(dataframe=display.astype(str)),
                   "report/failed_jobs": len(result["problems"])}
        comparisons = result["stats"].comparisons
        if len(comparisons):
            payload["report/comparisons"] = wandb.Table(dataframe=comparisons.astype(str))
        for path in plots:
            payload[f"report/{path.stem}"] = wandb.Image(str(path))
        run.log(payload)
        offline = getattr(run.settings, "mode", "") == "offline"
        where = getattr(run.settings, "sync_dir", "") if offline else getattr(run, "url", "")
        run.finish()
        if offline:
            return f"W&B: report saved offline; upload with: wandb sync {where}"
        return f"W&B: logged the report{f' to {where}' if where else ''}"
    except Exception as error:  # noqa: BLE001 - W&B must never lose the local report
        return f"W&B: logging failed ({type(error).__name__}: {error}); skipped"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    sweep_dir: Path = args.sweep_dir
    if not sweep_dir.exists():
        return _error(f"{sweep_dir} does not exist")
    if not sweep_dir.is_dir():
        return _error(f"{sweep_dir} is not a directory")
    if not find_job_dirs(sweep_dir):
        return _error(f"no job directories (with .hydra/ or metrics.json) under {sweep_dir}")
    try:
        pairs = parse_pairs(args.pair)
    except ValueError as error:
        return _error(f"--pair: {error}")
    try:
        axis_baselines = parse_axis_baselines(args.axis_baseline)
    except ValueError as error:
        return _error(f"--axis-baseline: {error}")
    result = build_report(sweep_dir, args.out, split=args.split, pairs=pairs,
                          axis_baselines=axis_baselines)
    plots: list[Path] = []
    if not args.no_plots:
        from eapo_exp.report.plots import make_plots

        plots = make_plots(sweep_dir, result["out_dir"], split=args.split,
                           jobs=result["jobs"], df=result["df"], stats=result["stats"])
    print(result["markdown"])
    print()
    print(f"wrote {len(result['files']) + len(plots)} file(s) to {result['out_dir']}:")
    for path in [*result["files"], *plots]:
        print(f"  {path.name}")
    if args.wandb:
        print(log_to_wandb(result, plots, sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
