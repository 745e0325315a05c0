"""Run and sweep directory names: the resolvers `short_dirname` and `claim_dir` that
conf/config.yaml uses for Hydra's run, sweep and job directories."""

from __future__ import annotations

import atexit
import hashlib
import itertools
import os
import re
import shutil
import sys
import tempfile

MAX_DIRNAME = 120
# Anything else (path separators, spaces, quotes, brackets, non-ASCII) becomes "_".
UNSAFE_DIRNAME_CHARS = re.compile(r"[^A-Za-z0-9._,=+@-]+")


def short_dirname(name: str) -> str:
    """A sweep job's directory name: its overrides as one flat, portable path component.

    Unsafe characters become "_" (a path-valued override would otherwise nest the job under
    one folder per path component); names over MAX_DIRNAME characters are cut and end in a
    hash of the whole string (file systems refuse names over 255 bytes; Optuna's float
    overrides and long override lists exceed that)."""
    name = str(name)
    safe = UNSAFE_DIRNAME_CHARS.sub("_", name)
    if len(safe) <= MAX_DIRNAME:
        return safe
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"{safe[:MAX_DIRNAME - 11]}-{digest}"


def claim_dir(base: str) -> str:
    """Create and return a run or sweep directory no other job has: `base`, else `base-1`,
    `base-2`, ... (os.mkdir is atomic, so two jobs started in the same second never share
    one). Registered with use_cache: Hydra resolves the node once per sweep or run and
    copies the cache into every job's config.

    A non-main process of an `accelerate launch` job gets a scratch directory for Hydra's
    own files instead, removed at exit: the job writes into the main process's directory
    (pipeline.run_job)."""
    rank = os.environ.get("RANK", "0")
    if rank != "0":
        scratch = tempfile.mkdtemp(prefix=f"eapo-exp-rank{rank}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        return scratch
    try:
        return mkdir_unique(base)
    except OSError as error:
        # Raised inside Hydra's own set-up, which would print a traceback.
        print(f"eapo-exp: error: cannot create the output directory {base} "
              f"({error.strerror or error}); set paths.output_root (or hydra.run.dir / "
              "hydra.sweep.dir) to a writable place", file=sys.stderr)
        sys.exit(2)


def mkdir_unique(base: str) -> str:
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    for attempt in itertools.count():
        path = base if attempt == 0 else f"{base}-{attempt}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise AssertionError("unreachable")
