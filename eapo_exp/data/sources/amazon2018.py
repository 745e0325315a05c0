"""Amazon Review Data (2018), one category, from its raw files.

Get the files for a category (e.g. `Movies_and_TV_5.json.gz` or `Movies_and_TV.json.gz`
and `meta_Movies_and_TV.json.gz`) from https://nijianmo.github.io/amazon/ (the data is for
research use; cite J. Ni, J. Li, J. McAuley, EMNLP 2019). It is not redistributed here.

reviews: JSON lines with reviewerID, asin, unixReviewTime, overall (rating).
metadata: JSON lines with asin and title. Some of the 2018 metadata files are Python dict
literals rather than strict JSON; each such line is read with `ast.literal_eval`.
Files ending in `.gz` are read as gzip, others as plain text.

Cleaning:
- HTML entities in titles are unescaped, repeatedly for double-escaped ones
  ("Tom &amp;amp; Jerry" -> "Tom & Jerry"), and whitespace is collapsed.
- Titles longer than 300 characters or carrying HTML or JavaScript (a tag, `var x =`, `{`,
  `function(`, `getElementById`, ...) are scraping junk and treated as missing.
- An asin listed several times in the metadata keeps its first usable title.
- Reviews repeated exactly (same reviewer, asin and time; the 2018 dumps contain such
  copies) are kept once. unixReviewTime has day resolution, so many of a user's
  interactions share a timestamp; rows keep file order, which later stable sorts use to
  break ties.
- Reviewed items without metadata or without a usable title simply have no title.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eapo_exp.data.interactions import InteractionData
from eapo_exp.errors import DataError

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 300
REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")
RATING_FIELD = "overall"
# Markers of scraped page code rather than a product name. Deliberately narrow: book titles
# such as "JavaScript: The Good Parts" or "Node.js in Action" must survive.
_JUNK = re.compile(
    r"<\s*/?\s*[a-zA-Z!][^>]*>"  # an HTML tag
    r"|\bvar\s+[A-Za-z_$][\w$]*\s*="  # a JavaScript variable declaration
    r"|[{}]"
    r"|\bfunction\s*\("
    r"|getElementById|getTime\(\)|\bdocument\.\w+\s*\(|\bwindow\.\w+\s*[=(]"
)


def usable_title(raw: Any) -> str:
    """The usable title, or "" when it is missing or scraping junk."""
    if not isinstance(raw, str):
        return ""
    title = raw
    for _ in range(3):  # some titles are escaped twice ("&amp;amp;")
        unescaped = html.unescape(title)
        if unescaped == title:
            break
        title = unescaped
    title = " ".join(title.split())
    if not title or len(title) > MAX_TITLE_CHARS or _JUNK.search(title):
        return ""
    return title


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _records(path: Path, literal_fallback: bool) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-empty line; DataError on unreadable lines."""
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"{path}: {what}")
    seen_any = False
    try:
        with _open_text(path) as handle:
            for number, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line:
                    continue
                seen_any = True
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    if not literal_fallback:
                        raise DataError(f"{path}: line {number} is not JSON ({err.msg})") from None
                    try:
                        record = ast.literal_eval(line)
                    except (ValueError, SyntaxError, MemoryError, RecursionError):
                        raise DataError(
                            f"{path}: line {number} is neither JSON nor a Python dict literal "
                            f"({err.msg})"
                        ) from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {number} is a {type(record).__name__}, "
                                    "not an object")
                yield number, record
    except (OSError, EOFError, UnicodeDecodeError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({err})") from None
    if not seen_any:
        raise DataError(f"{path}: file is empty")


def _missing_field(path: Path, number: int, record: dict, field: str) -> DataError:
    return DataError(f"{path}: line {number} lacks field {field!r} (it has {sorted(record)})")


class Amazon2018Source:
    """One category of the Amazon review data 2018: reviews plus product metadata titles."""

    def __init__(self, reviews_path: str, meta_path: str) -> None:
        self.reviews_path = str(reviews_path)
        self.meta_path = str(meta_path)

    def read_reviews(self) -> pd.DataFrame:
        path = Path(self.reviews_path).expanduser()
        users: list[str] = []
        items: list[str] = []
        times: list[float] = []
        ratings: list[float] = []
        for number, record in _records(path, literal_fallback=False):
            for field in REVIEW_FIELDS:
                value = record.get(field)
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise _missing_field(path, number, record, field)
            try:
                timestamp = float(record["unixReviewTime"])
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {number}: non-numeric unixReviewTime "
                                f"{record['unixReviewTime']!r}") from None
            rating = record.get(RATING_FIELD)
            try:
                rating = float("nan") if rating is None else float(rating)
            except (TypeError, ValueError):
                raise DataError(f"{path}: line {number}: non-numeric {RATING_FIELD} "
                                f"{rating!r}") from None
            users.append(str(record["reviewerID"]).strip())
            items.append(str(record["asin"]).strip())
            times.append(timestamp)
            ratings.append(rating)
        frame = pd.DataFrame({
            "user": pd.Series(users, dtype=str),
            "item": pd.Series(items, dtype=str),
            "timestamp": np.asarray(times, dtype=np.float64),
            "rating": np.asarray(ratings, dtype=np.float64),
        })
        if frame["rating"].isna().all():
            frame = frame.drop(columns="rating")
        duplicated = frame.duplicated(["user", "item", "timestamp"]).to_numpy()
        if duplicated.any():
            log.info("%s: dropped %d exact duplicate reviews", path, int(duplicated.sum()))
            frame = frame[~duplicated].reset_index(drop=True)
        return frame

    def read_titles(self) -> tuple[dict[str, str], int]:
        """asin -> title, and how many metadata titles were junk or empty."""
        path = Path(self.meta_path).expanduser()
        titles: dict[str, str] = {}
        unusable = 0
        for number, record in _records(path, literal_fallback=True):
            asin = record.get("asin")
            if asin is None or not str(asin).strip():
                raise _missing_field(path, number, record, "asin")
            asin = str(asin).strip()
            if asin in titles:
                continue
            title = usable_title(record.get("title"))
            if title:
                titles[asin] = title
            else:
                unusable += 1
        return titles, unusable

    def load(self) -> InteractionData:
        interactions = self.read_reviews()
        titles, unusable = self.read_titles()
        reviewed = set(interactions["item"].unique())
        titled = sum(1 for asin in reviewed if asin in titles)
        log.info(
            "read %d reviews (%d users, %d items) from %s; %d of the reviewed items have a "
            "usable title in %s (%d metadata rows had an empty or junk title)",
            len(interactions), interactions["user"].nunique(), len(reviewed), self.reviews_path,
            titled, self.meta_path, unusable,
        )
        return InteractionData(interactions=interactions, titles=titles)
