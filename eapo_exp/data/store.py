"""Save, load and cache a SampleSet (Arrow files per split + catalog and stats JSON)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import datasets

from eapo_exp.cache import ArtifactCache, reading
from eapo_exp.data.samples import to_dataset
from eapo_exp.data.schema import ItemCatalog, SampleSet

log = logging.getLogger(__name__)
datasets.disable_progress_bars()  # per-split save/load bars are noise next to the stage bars

# Bump when the sample-building code changes what it produces, so old caches are not reused.
SAMPLES_FORMAT_VERSION = 1


def save_samples(samples: SampleSet, directory: Path) -> None:
    directory = Path(directory)
    for name, split in samples.splits.items():
        if len(split):  # datasets cannot reload an empty saved split; rebuilt empty on load
            split.save_to_disk(str(directory / "splits" / name))
    (directory / "catalog.json").write_text(json.dumps(
        {"raw_ids": samples.catalog.raw_ids, "titles": samples.catalog.titles}))
    (directory / "stats.json").write_text(json.dumps(samples.stats, indent=2))
    (directory / "meta.json").write_text(json.dumps({"item_noun": samples.item_noun,
                                                     "splits": sorted(samples.splits)}))


def load_samples(directory: Path) -> SampleSet:
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    catalog = json.loads((directory / "catalog.json").read_text())
    splits = {name: datasets.load_from_disk(str(directory / "splits" / name))
              if (directory / "splits" / name).exists() else to_dataset([])
              for name in meta["splits"]}
    return SampleSet(catalog=ItemCatalog(catalog["raw_ids"], catalog["titles"]), splits=splits,
                     item_noun=meta["item_noun"],
                     stats=json.loads((directory / "stats.json").read_text()),
                     fingerprint=directory.name)


def file_identity(value: Any) -> Any:
    """Size and mtime of a path-valued argument, so an edited input file misses the cache."""
    if isinstance(value, str) and value and os.path.isfile(value):
        stat = os.stat(value)
        return {"path": os.path.abspath(value), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return value


def samples_spec(source_spec: dict, sample_params: dict) -> dict:
    source = {key: file_identity(value) for key, value in source_spec.items()
              if key != "cache_dir"}  # where raw data is cached does not change the samples
    return {"format": SAMPLES_FORMAT_VERSION, "source": source, "params": sample_params}


def cached_samples(cache: ArtifactCache, spec: dict, build, runtime=None) -> SampleSet:
    """Load the samples for `spec` from the cache, building them with `build()` if absent."""
    path = cache.get_or_build("samples", spec, lambda tmp: save_samples(build(), tmp),
                              runtime)
    with reading(path):
        return load_samples(path)
