"""Data sources: atomic files, MovieLens-100K cache, Amazon 2018 raw files, synthetic data."""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eapo_exp.data.sources import (
    Amazon2018Source,
    AtomicSource,
    MovieLens100KSource,
    SyntheticSource,
    ml100k,
)
from eapo_exp.errors import DataError

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t4\t100\n"
    "u1\ti2\t5\t200\n"
    "u2\ti1\t3\t150\n"
    "\n"
    "u2\ti3\t1\t150\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "i1\tToy Story\t1995\tAnimation Comedy\n"
    'i2\tSay "Anything"\t\tDrama\n'
    "i3\t\t1990\tDrama\n"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def atomic_files(tmp_path: Path) -> tuple[Path, Path]:
    return write(tmp_path / "toy.inter", INTER), write(tmp_path / "toy.item", ITEM)


def load_error(inter: Path, item: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        AtomicSource(str(inter), str(item), **kwargs).load()
    message = str(info.value)
    assert "\n" not in message
    return message


# -- atomic ----------------------------------------------------------------------------------


def test_atomic_round_trip(atomic_files):
    inter, item = atomic_files
    data = AtomicSource(str(inter), str(item), title_suffix_field="release_year").load()
    frame = data.interactions
    assert list(frame.columns) == ["user", "item", "timestamp", "rating"]
    assert frame["user"].tolist() == ["u1", "u1", "u2", "u2"]  # file order, blank line skipped
    assert frame["item"].tolist() == ["i1", "i2", "i1", "i3"]
    assert frame["timestamp"].dtype == np.float64 and frame["rating"].dtype == np.float64
    assert frame["timestamp"].tolist() == [100.0, 200.0, 150.0, 150.0]
    assert frame["rating"].tolist() == [4.0, 5.0, 3.0, 1.0]
    assert all(isinstance(v, str) for v in frame["user"]) and all(
        isinstance(v, str) for v in frame["item"]
    )
    # movie_title auto-detected; year appended where present; empty title left out
    assert data.titles == {"i1": "Toy Story (1995)", "i2": 'Say "Anything"'}


def test_atomic_without_rating_and_explicit_fields(tmp_path):
    inter = write(tmp_path / "a.inter", "uid:token\tiid:token\tts:float\nx\t7\t1.5\ny\t7\t2\n")
    item = write(tmp_path / "a.item", "iid:token\tname:token_seq\n7\tSeven\n")
    data = AtomicSource(str(inter), str(item), user_field="uid", item_field="iid",
                        time_field="ts").load()
    assert "rating" not in data.interactions.columns
    assert data.titles == {"7": "Seven"}
    plain = AtomicSource(str(inter), str(item), user_field="uid", item_field="iid",
                         time_field="ts", title_field="name").load()
    assert plain.titles == {"7": "Seven"}


def test_atomic_suffix_not_doubled(tmp_path):
    inter = write(tmp_path / "a.inter", "user_id\titem_id\ttimestamp\nu\t1\t1\n")
    item = write(tmp_path / "a.item", "item_id\ttitle\tyear\n1\tHeat (1995)\t1995\n")
    data = AtomicSource(str(inter), str(item), title_suffix_field="year").load()
    assert data.titles == {"1": "Heat (1995)"}


def test_atomic_missing_file(atomic_files, tmp_path):
    inter, item = atomic_files
    message = load_error(tmp_path / "nope.inter", item)
    assert "nope.inter" in message and "does not exist" in message
    message = load_error(inter, tmp_path / "nope.item")
    assert "nope.item" in message and "does not exist" in message


def test_atomic_empty_file(atomic_files, tmp_path):
    _, item = atomic_files
    message = load_error(write(tmp_path / "empty.inter", ""), item)
    assert "empty.inter" in message and "empty" in message
    message = load_error(write(tmp_path / "hdr.inter", INTER.splitlines()[0] + "\n"), item)
    assert "hdr.inter" in message and "no rows" in message


def test_atomic_missing_columns(atomic_files, tmp_path):
    inter, item = atomic_files
    bad = write(tmp_path / "bad.inter", "user_id:token\titem_id:token\nu\ti1\n")
    message = load_error(bad, item)
    assert "bad.inter" in message and "'timestamp'" in message
    assert "['user_id', 'item_id']" in message  # which columns exist
    no_title = write(tmp_path / "nt.item", "item_id:token\tclass:token_seq\ni1\tx\n")
    message = load_error(inter, no_title)
    assert "nt.item" in message and "title" in message and "class" in message
    message = load_error(inter, item, title_field="headline")
    assert "toy.item" in message and "'headline'" in message


def test_atomic_non_numeric_timestamp(atomic_files, tmp_path):
    _, item = atomic_files
    text = INTER.replace("u1\ti2\t5\t200", "u1\ti2\t5\tyesterday")
    message = load_error(write(tmp_path / "ts.inter", text), item)
    assert "ts.inter" in message and "timestamp" in message
    assert "line 3" in message and "'yesterday'" in message
    message = load_error(write(tmp_path / "ts2.inter", INTER.replace("\t150\n", "\t\n", 1)), item)
    assert "ts2.inter" in message and "line 4" in message


def test_atomic_item_absent_from_item_file(atomic_files, tmp_path):
    _, item = atomic_files
    text = INTER + "u3\tghost\t2\t9\nu4\tghost\t2\t9\nu4\tphantom\t2\t9\n"
    message = load_error(write(tmp_path / "g.inter", text), item)
    assert "g.inter" in message and "toy.item" in message
    assert "'ghost'" in message and "line 7" in message
    assert "3 row(s) name 2 such item(s)" in message


@pytest.mark.parametrize(
    ("row", "line", "fields"),
    [("u1\ti2\t5\t200\textra", 3, 5), ("u1\ti2\t200", 3, 3), ("   ", 3, 1)],
)
def test_atomic_malformed_rows(atomic_files, tmp_path, row, line, fields):
    _, item = atomic_files
    text = INTER.replace("u1\ti2\t5\t200", row)
    message = load_error(write(tmp_path / "m.inter", text), item)
    assert "m.inter" in message and f"line {line} has {fields} field(s)" in message


def test_atomic_duplicate_and_empty_ids(atomic_files, tmp_path):
    inter, _ = atomic_files
    dup = write(tmp_path / "dup.item", ITEM + "i1\tToy Story again\t1999\tx\n")
    message = load_error(inter, dup)
    assert "dup.item" in message and "'i1'" in message and "line 5" in message
    empty_user = write(tmp_path / "eu.inter", INTER.replace("u2\ti1", "\ti1"))
    message = load_error(empty_user, atomic_files[1])
    assert "eu.inter" in message and "empty user_id" in message and "line 4" in message


def test_atomic_is_fast_on_100k_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 100_000
    frame = pd.DataFrame({"u": rng.integers(0, 1000, n), "i": rng.integers(0, 2000, n),
                          "r": rng.integers(1, 6, n), "t": rng.integers(8e8, 9e8, n)})
    inter = tmp_path / "big.inter"
    frame.to_csv(inter, sep="\t", index=False,
                 header=["user_id:token", "item_id:token", "rating:float", "timestamp:float"])
    item = write(tmp_path / "big.item",
                 "item_id:token\ttitle:token_seq\n" + "".join(f"{i}\tT{i}\n" for i in range(2000)))
    start = time.perf_counter()
    data = AtomicSource(str(inter), str(item)).load()
    assert time.perf_counter() - start < 3.0
    assert len(data.interactions) == n and len(data.titles) == 2000


# -- MovieLens-100K --------------------------------------------------------------------------

FAKE_ML_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "2\tGoldenEye\t1995\tAction Adventure Thriller\n"
    "267\tunkonwn\tunkonwn\tunknown\n"
    "1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation\n"
)
FAKE_ML_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t1\t3\t881250949\n186\t2\t3\t891717742\n22\t267\t1\t878887116\n22\t1412\t2\t878887117\n"
)


def populate_ml_cache(cache: Path) -> Path:
    data_dir = cache / "ml-100k"
    data_dir.mkdir(parents=True)
    write(data_dir / "ml-100k.inter", FAKE_ML_INTER)
    write(data_dir / "ml-100k.item", FAKE_ML_ITEM)
    return data_dir


@pytest.fixture
def no_fetch(monkeypatch):
    def refuse(dest):
        raise AssertionError("must not fetch")

    monkeypatch.setattr(ml100k, "fetch_from_recbole", refuse)
    monkeypatch.setattr(ml100k, "fetch_from_grouplens", refuse)


def test_ml100k_reads_populated_cache(tmp_path, no_fetch):
    populate_ml_cache(tmp_path)
    data = MovieLens100KSource(cache_dir=str(tmp_path)).load()
    assert data.interactions["user"].tolist() == ["196", "186", "22", "22"]
    assert data.interactions["rating"].tolist() == [3.0, 3.0, 1.0, 2.0]
    assert data.titles == {
        "1": "Toy Story (1995)",
        "2": "GoldenEye (1995)",
        "1412": "Land Before Time III: The Time of the Great Giving (1995)",
    }  # placeholder title of 267 left out; year not doubled, "V" not appended
    plain = MovieLens100KSource(cache_dir=str(tmp_path), title_with_year=False).load()
    assert plain.titles["1"] == "Toy Story"


def test_ml100k_fetch_failure_lists_attempts(tmp_path, monkeypatch):
    def fail_pip(dest):
        raise RuntimeError("pip download exited with 1: no such index")

    def fail_url(dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(ml100k, "fetch_from_recbole", fail_pip)
    monkeypatch.setattr(ml100k, "fetch_from_grouplens", fail_url)
    with pytest.raises(DataError) as info:
        MovieLens100KSource(cache_dir=str(tmp_path / "cache")).load()
    message = str(info.value)
    assert "recbole==1.2.1" in message and "no such index" in message
    assert "grouplens" in message.lower() and "network unreachable" in message
    assert "\n" not in message
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []  # nothing half-written


def test_ml100k_falls_back_and_publishes_atomically(tmp_path, monkeypatch):
    calls = []

    def fail_pip(dest):
        calls.append("pip")
        raise RuntimeError("offline")

    def fake_grouplens(dest):
        calls.append("grouplens")
        write(dest / "ml-100k.inter", FAKE_ML_INTER)
        write(dest / "ml-100k.item", FAKE_ML_ITEM)

    monkeypatch.setattr(ml100k, "fetch_from_recbole", fail_pip)
    monkeypatch.setattr(ml100k, "fetch_from_grouplens", fake_grouplens)
    cache = tmp_path / "cache"
    data = MovieLens100KSource(cache_dir=str(cache)).load()
    assert calls == ["pip", "grouplens"] and len(data.interactions) == 4
    assert "GroupLens" in (cache / "ml-100k" / "SOURCE.txt").read_text()
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # claim released
    MovieLens100KSource(cache_dir=str(cache)).load()  # second load: cached, no fetch
    assert calls == ["pip", "grouplens"]


def test_fetch_from_recbole_extracts_from_wheel(tmp_path, monkeypatch):
    def fake_pip(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        assert cmd[-1] == "recbole==1.2.1"
        out = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(out / "recbole-1.2.1-py3-none-any.whl", "w") as wheel:
            for name in ml100k.ATOMIC_FILES:
                wheel.writestr(ml100k.RECBOLE_MEMBER_DIR + name, f"content of {name}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(ml100k.subprocess, "run", fake_pip)
    ml100k.fetch_from_recbole(tmp_path)
    assert (tmp_path / "ml-100k.item").read_text() == "content of ml-100k.item"


def test_grouplens_zip_conversion(tmp_path, no_fetch):
    archive = tmp_path / "ml-100k.zip"
    flags = "|".join(["0"] * 19)
    comedy = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("ml-100k/u.data", "196\t1\t3\t881250949\n186\t267\t3\t891717742\n")
        z.writestr("ml-100k/u.item",
                   ("1|Toy Story (1995)|01-Jan-1995||http://x|" + comedy + "\n"
                    "267|unknown||||" + flags + "\n").encode("latin-1"))
        z.writestr("ml-100k/u.user", "196|49|M|writer|55105\n186|39|F|executive|00000\n")
    data_dir = tmp_path / "cache" / "ml-100k"
    data_dir.mkdir(parents=True)
    ml100k.convert_grouplens_zip(archive, data_dir)
    assert "1\tToy Story\t1995\tComedy" in (data_dir / "ml-100k.item").read_text()
    data = MovieLens100KSource(cache_dir=str(tmp_path / "cache")).load()
    assert data.titles == {"1": "Toy Story (1995)"}
    assert data.interactions["item"].tolist() == ["1", "267"]


@pytest.mark.slow
def test_ml100k_real_fetch(tmp_path):
    data = MovieLens100KSource(cache_dir=str(tmp_path)).load()
    frame = data.interactions
    assert frame["user"].nunique() == 943
    assert frame["item"].nunique() == 1682
    assert len(frame) == 100_000
    assert data.titles["1"] == "Toy Story (1995)"
    assert len(data.titles) == 1681  # item 267 has only a placeholder title


# -- Amazon 2018 -----------------------------------------------------------------------------

REVIEWS = [
    {"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1500000000, "overall": 5.0},
    {"reviewerID": "A1", "asin": "B02", "unixReviewTime": 1500086400, "overall": 3.0,
     "reviewText": "fine"},
    {"reviewerID": "A2", "asin": "B01", "unixReviewTime": 1400000000, "overall": 4.0},
    {"reviewerID": "A2", "asin": "B01", "unixReviewTime": 1400000000, "overall": 4.0},  # copy
    {"reviewerID": "A2", "asin": "B03", "unixReviewTime": 1400000001, "overall": 1.0},
]
META_LINES = [
    json.dumps({"asin": "B01", "title": "Tom &amp;amp; Jerry  Collection"}),
    # python-literal line, as in some 2018 metadata files
    "{'asin': 'B02', 'title': 'Heat', 'also_buy': ['B01'], 'price': None}",
    json.dumps({"asin": "B03", "title": "var aPageStart = (new Date()).getTime();"}),
    json.dumps({"asin": "B04", "title": "x" * 301}),
    json.dumps({"asin": "B05"}),
    json.dumps({"asin": "B06", "title": '<span class="a">Junk</span>'}),
]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("gz", [True, False])
def test_amazon_reads_gz_and_plain(tmp_path, gz):
    ext = ".json.gz" if gz else ".json"
    reviews = write_jsonl(tmp_path / f"Cat{ext}", [json.dumps(r) for r in REVIEWS])
    meta = write_jsonl(tmp_path / f"meta_Cat{ext}", META_LINES)
    data = Amazon2018Source(str(reviews), str(meta)).load()
    frame = data.interactions
    assert list(frame.columns) == ["user", "item", "timestamp", "rating"]
    assert frame["user"].tolist() == ["A1", "A1", "A2", "A2"]  # exact copy dropped
    assert frame["item"].tolist() == ["B01", "B02", "B01", "B03"]
    assert frame["timestamp"].tolist() == [1500000000.0, 1500086400.0, 1400000000.0,
                                           1400000001.0]
    assert frame["rating"].tolist() == [5.0, 3.0, 4.0, 1.0]
    assert data.titles == {"B01": "Tom & Jerry Collection", "B02": "Heat"}


def test_amazon_errors(tmp_path):
    meta = write_jsonl(tmp_path / "meta.json", META_LINES)
    missing = tmp_path / "none.json.gz"
    with pytest.raises(DataError, match=r"none\.json\.gz: does not exist"):
        Amazon2018Source(str(missing), str(meta)).load()

    lines = [json.dumps(r) for r in REVIEWS]
    lines[2] = json.dumps({"reviewerID": "A2", "unixReviewTime": 1})
    reviews = write_jsonl(tmp_path / "r.json", lines)
    with pytest.raises(DataError) as info:
        Amazon2018Source(str(reviews), str(meta)).load()
    assert "r.json" in str(info.value) and "line 3" in str(info.value)
    assert "'asin'" in str(info.value)

    lines = [json.dumps(r) for r in REVIEWS]
    lines[1] = "{'reviewerID': 'A1'"
    reviews = write_jsonl(tmp_path / "bad.json.gz", lines)
    with pytest.raises(DataError, match=r"bad\.json\.gz: line 2 is not JSON"):
        Amazon2018Source(str(reviews), str(meta)).load()

    reviews = write_jsonl(tmp_path / "ok.json", [json.dumps(r) for r in REVIEWS])
    bad_meta = write_jsonl(tmp_path / "meta_bad.json", [*META_LINES, "{'title': 'no asin'}"])
    with pytest.raises(DataError, match=r"meta_bad\.json: line 7 lacks field 'asin'"):
        Amazon2018Source(str(reviews), str(bad_meta)).load()

    broken_meta = write_jsonl(tmp_path / "meta_broken.json", ["{'asin': 'B1', 'title': "])
    with pytest.raises(DataError, match=r"meta_broken\.json: line 1 is neither JSON"):
        Amazon2018Source(str(reviews), str(broken_meta)).load()

    empty = write(tmp_path / "empty.json", "")
    with pytest.raises(DataError, match=r"empty\.json: file is empty"):
        Amazon2018Source(str(empty), str(meta)).load()

    not_gzip = write(tmp_path / "fake.json.gz", "plain text")
    with pytest.raises(DataError, match=r"fake\.json\.gz: cannot read"):
        Amazon2018Source(str(not_gzip), str(meta)).load()


# -- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic():
    a, b = SyntheticSource(seed=3).load(), SyntheticSource(seed=3).load()
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    assert a.titles == b.titles
    c = SyntheticSource(seed=4).load()
    assert not a.interactions.equals(c.interactions)


def test_synthetic_structure():
    source = SyntheticSource()
    start = time.perf_counter()
    data = source.load()
    assert time.perf_counter() - start < 1.0
    frame, groups = data.interactions, source.item_groups()
    assert frame["user"].nunique() == 200 and set(frame["item"]) <= set(groups)
    assert len(data.titles) == 120 and len(set(data.titles.values())) == 120
    assert 15 <= frame.groupby("user").size().mean() <= 25
    assert frame.groupby("user").size().std() > 0  # lengths vary

    # titles: words of one group's vocabulary, plus a number
    vocab: dict[int, set[str]] = {}
    for item, title in data.titles.items():
        *words, number = title.split()
        assert number.isdigit() and 2 <= len(words) <= 3
        vocab.setdefault(groups[item], set()).update(words)
    assert all(not (vocab[g] & vocab[h]) for g in vocab for h in vocab if g < h)

    # chronological, interleaved across users, increasing per user, no repeats
    assert frame["timestamp"].is_monotonic_increasing
    assert frame["user"].head(30).nunique() > 5
    same, total = 0, 0
    for _, rows in frame.groupby("user", sort=False):
        assert rows["timestamp"].diff().dropna().gt(0).all()
        assert not rows["item"].duplicated().any()
        g = [groups[i] for i in rows["item"]]
        same += sum(x == y for x, y in itertools.pairwise(g))
        total += len(g) - 1
    assert same / total > 0.75  # drift 0.15: consecutive items mostly share a group

    drifting = SyntheticSource(drift=0.9).load().interactions
    g = drifting.groupby("user", sort=False)["item"].apply(lambda s: [groups[i] for i in s])
    shares = [sum(x == y for x, y in itertools.pairwise(v)) / (len(v) - 1) for v in g]
    assert np.mean(shares) < 0.3


def test_synthetic_popularity_within_group():
    source = SyntheticSource(num_users=300)
    counts = source.load().interactions["item"].value_counts()
    # a per-group popularity order: the most popular item of a group beats its median one
    groups = source.item_groups()
    for g in range(source.num_groups):
        members = counts[[i for i in counts.index if groups[i] == g]]
        assert members.max() > 2 * members.median()
