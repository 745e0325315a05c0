"""RecBole atomic files (`<name>.inter` + `<name>.item`) as a data source.

Atomic files are tab-separated with one header line whose tokens carry a type suffix,
e.g. `user_id:token  item_id:token  rating:float  timestamp:float` and
`item_id:token  movie_title:token_seq  release_year:token`. The suffix is stripped.
Fields are never quoted (a `"` is an ordinary character).

Rows come back in file order; ties in timestamp are kept as they are (later code sorts
stably, so file order breaks ties).
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eapo_exp.data.interactions import InteractionData
from eapo_exp.errors import DataError

log = logging.getLogger(__name__)

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_CANDIDATES = ("title", "movie_title", "name", "item_name", "track_name")


def strip_type(header_token: str) -> str:
    """`user_id:token` -> `user_id`; a token without a known type suffix is kept whole."""
    name, sep, suffix = header_token.strip().rpartition(":")
    if sep and suffix in ATOMIC_TYPES:
        return name
    return header_token.strip()


@dataclass
class AtomicTable:
    """One atomic file: its rows as strings, and each row's 1-based line number (header = 1)."""

    path: str
    frame: pd.DataFrame
    lines: list[int]

    def bad_rows(self, mask: np.ndarray, column: str, problem: str) -> DataError:
        """DataError naming the first row where `mask` is set, its line and value."""
        rows = mask.nonzero()[0]
        first = int(rows[0])
        return DataError(
            f"{self.path}: {problem} at line {self.lines[first]}: "
            f"{self.frame[column].iloc[first]!r} ({len(rows)} bad row(s) in all)"
        )


def read_atomic_table(path: str | os.PathLike, required: tuple[str, ...] = ()) -> AtomicTable:
    """Read one atomic file as strings; column names without their type suffix.

    Raises DataError (one line naming the file) on a missing or empty file, a header with
    duplicate columns, rows with the wrong number of fields, or missing `required` columns.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"{path}: {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")

    header_line, _, body = text.partition("\n")
    header_line = header_line.rstrip("\r")
    columns = [strip_type(tok) for tok in header_line.split("\t")]
    if any(not c for c in columns):
        raise DataError(f"{path}: header line has an empty column name: {header_line!r}")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: header names column(s) {dupes} more than once")
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing}; the file has {columns}")

    # Fast check for rows with the wrong number of fields: pandas silently pads short rows,
    # so compare the total number of tabs with what well-formed rows would have.
    lines = body.split("\n")  # not splitlines(): it also splits on \x85, \u2028, ...
    data_lines = [i for i, line in enumerate(lines) if line not in ("", "\r")]
    if not data_lines:
        raise DataError(f"{path}: file has a header but no rows")
    expected_tabs = len(columns) - 1
    if body.count("\t") != expected_tabs * len(data_lines):
        for i in data_lines:
            got = lines[i].count("\t") + 1
            if got != len(columns):
                raise DataError(
                    f"{path}: line {i + 2} has {got} field(s), the header has {len(columns)}"
                )
    try:
        frame = pd.read_csv(
            io.StringIO(body),
            sep="\t",
            header=None,
            names=columns,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=True,
            engine="c",
        )
    except (pd.errors.ParserError, ValueError) as err:  # should be caught above; be safe
        raise DataError(f"{path}: malformed rows ({str(err).strip()})") from None
    if len(frame) != len(data_lines):  # e.g. a stray '\r' splitting a line for pandas only
        raise DataError(
            f"{path}: read {len(frame)} rows but the file has {len(data_lines)} non-empty "
            "lines (stray carriage returns?)"
        )
    return AtomicTable(path=str(path), frame=frame, lines=[i + 2 for i in data_lines])


def _to_float(table: AtomicTable, column: str) -> pd.Series:
    """Convert a string column to float; DataError names the first bad line and value."""
    raw = table.frame[column]
    try:
        values = np.array(raw.tolist(), dtype=np.float64)  # fast; accepts surrounding spaces
    except ValueError:
        values = pd.to_numeric(raw.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise table.bad_rows(bad, column, f"non-numeric {column}")
    return pd.Series(values, index=raw.index, name=column)


def _require_nonempty(table: AtomicTable, column: str) -> pd.Series:
    values = table.frame[column].str.strip()
    empty = (values == "").to_numpy()
    if empty.any():
        raise table.bad_rows(empty, column, f"empty {column}")
    return values


class AtomicSource:
    """Interactions from a RecBole `.inter` file and titles from the matching `.item` file.

    title_field: the `.item` column holding the title; empty = the first of
        title, movie_title, name, item_name, track_name that the file has.
    title_suffix_field: optional `.item` column appended in parentheses, e.g. release_year
        gives "Toy Story (1995)"; skipped where empty or where the title already ends with it.
    rating_field: read into a float `rating` column when the `.inter` file has it.
    """

    def __init__(
        self,
        inter_path: str,
        item_path: str,
        user_field: str = "user_id",
        item_field: str = "item_id",
        time_field: str = "timestamp",
        rating_field: str = "rating",
        title_field: str = "",
        title_suffix_field: str = "",
    ) -> None:
        self.inter_path = str(inter_path)
        self.item_path = str(item_path)
        self.user_field = user_field
        self.item_field = item_field
        self.time_field = time_field
        self.rating_field = rating_field
        self.title_field = title_field
        self.title_suffix_field = title_suffix_field

    # -- pieces, public so that wrappers (e.g. MovieLens-100K) can reuse them --------------

    def read_items(self) -> pd.DataFrame:
        """The `.item` table as strings (type suffixes stripped), item ids stripped and unique."""
        table = read_atomic_table(self.item_path, required=(self.item_field,))
        ids = _require_nonempty(table, self.item_field)
        dup = ids.duplicated().to_numpy()
        if dup.any():
            raise table.bad_rows(dup, self.item_field, "item listed a second time")
        items = table.frame
        items[self.item_field] = ids
        return items

    def resolve_title_field(self, items: pd.DataFrame) -> str:
        if self.title_field:
            if self.title_field not in items.columns:
                raise DataError(
                    f"{self.item_path}: missing title column {self.title_field!r}; the file has "
                    f"{list(items.columns)}"
                )
            return self.title_field
        for name in TITLE_CANDIDATES:
            if name in items.columns:
                return name
        raise DataError(
            f"{self.item_path}: no title column (looked for {list(TITLE_CANDIDATES)}; set "
            f"title_field); the file has {list(items.columns)}"
        )

    def titles_from_items(self, items: pd.DataFrame) -> dict[str, str]:
        """Raw item id -> title; items with an empty title are left out."""
        titles = items[self.resolve_title_field(items)].str.strip().tolist()
        if self.title_suffix_field:
            if self.title_suffix_field not in items.columns:
                raise DataError(
                    f"{self.item_path}: missing title suffix column {self.title_suffix_field!r};"
                    f" the file has {list(items.columns)}"
                )
            suffixes = items[self.title_suffix_field].str.strip().tolist()
            titles = [_with_suffix(t, s) for t, s in zip(titles, suffixes, strict=True)]
        return {i: t for i, t in zip(items[self.item_field].tolist(), titles, strict=True) if t}

    def read_interactions(self) -> tuple[pd.DataFrame, list[int]]:
        """Interactions in file order, and each row's line number in the `.inter` file."""
        fields = (self.user_field, self.item_field, self.time_field)
        table = read_atomic_table(self.inter_path, required=fields)
        out = pd.DataFrame(
            {
                "user": _require_nonempty(table, self.user_field),
                "item": _require_nonempty(table, self.item_field),
                "timestamp": _to_float(table, self.time_field),
            }
        )
        if self.rating_field and self.rating_field in table.frame.columns:
            out["rating"] = _to_float(table, self.rating_field)
        return out, table.lines

    # -- the source ------------------------------------------------------------------------

    def load(self) -> InteractionData:
        data, _ = self.load_with_items()
        interactions = data.interactions
        log.info(
            "read %d interactions (%d users, %d items) from %s; %d titled items from %s",
            len(interactions), interactions["user"].nunique(), interactions["item"].nunique(),
            self.inter_path, len(data.titles), self.item_path,
        )
        return data

    def load_with_items(self) -> tuple[InteractionData, pd.DataFrame]:
        """The data, and the `.item` table it came from (for wrappers that build titles)."""
        interactions, lines = self.read_interactions()
        items = self.read_items()
        titles = self.titles_from_items(items)  # column problems before row problems
        known = interactions["item"].isin(items[self.item_field]).to_numpy()
        if not known.all():
            rows = (~known).nonzero()[0]
            first = int(rows[0])
            unknown = interactions["item"].iloc[rows].nunique()
            raise DataError(
                f"{self.inter_path}: item {interactions['item'].iloc[first]!r} at line "
                f"{lines[first]} is absent from {self.item_path} "
                f"({len(rows)} row(s) name {unknown} such item(s))"
            )
        return InteractionData(interactions=interactions, titles=titles), items


def _with_suffix(title: str, suffix: str) -> str:
    if not title or not suffix:
        return title
    tail = f" ({suffix})"
    return title if title.endswith(tail) else title + tail
