"""Plain-text/markdown metric tables."""

from __future__ import annotations

DEFAULT_COLUMNS = ("hr@1", "hr@5", "ndcg@5")


def format_metric_table(rows: dict[str, dict], columns=DEFAULT_COLUMNS, title: str = "",
                        digits: int = 4) -> str:
    """Markdown table: one row per method, one column per metric, plus the sample count."""
    header = ["method", *columns, "n"]
    lines = [f"### {title}"] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] * len(header)) + "|")
    for name, values in rows.items():
        cells = [name] + [f"{values[c]:.{digits}f}" if c in values else "-" for c in columns]
        cells.append(str(values.get("n", "-")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
