"""Paired comparisons the sweep report does not print: any two methods of a sweep, e.g. the
paper's ordering EAPO > S-DPO > DPO. Same statistics as the report (paired bootstrap CI,
exact McNemar on HR@1, verdict), pooled over the seeds both methods have.

    python docs/results/cpu_long/method_pairs.py outputs/cpu_long S-DPO:DPO EAPO:S-DPO
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eapo_exp.report.comparisons import compare, group_samples
from eapo_exp.report.jobs import rows_from_jobs, scan_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("pairs", nargs="+", help="METHOD:REFERENCE, display names")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    jobs = scan_jobs(args.sweep_dir)
    df, _ = rows_from_jobs(jobs)
    axes, groups = group_samples(jobs, df)
    by_method = {key[1]: value for key, value in groups.items()
                 if key[0] == args.split and all(v is None for v in key[2:])}
    print("| method | vs | metric | difference | 95% CI | McNemar p | verdict | n | seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pair in args.pairs:
        method, reference = pair.split(":")
        if method not in by_method or reference not in by_method:
            raise SystemExit(f"{pair}: known methods on {args.split} are {sorted(by_method)}")
        for row in compare(by_method[method], by_method[reference]):
            p = "-" if row["mcnemar_p"] != row["mcnemar_p"] else f"{row['mcnemar_p']:.3f}"
            print(f"| {method} | {reference} | {row['metric']} | {row['difference']:+.4f} | "
                  f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] | {p} | {row['verdict']} | "
                  f"{row['n']} | {row['seeds']} |")


if __name__ == "__main__":
    main()
