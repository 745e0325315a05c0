"""Content-addressed artifact cache shared by runs and sweep jobs.

An artifact lives in `<root>/<kind>/<fingerprint>/`. It is built in a private temporary
directory next to it and renamed into place, so readers never see a half-written artifact;
a lock file serialises two jobs that want to build the same artifact at the same time
(the second one waits and then reuses the first one's result).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"


def fingerprint(spec: Any, length: int = 16) -> str:
    """Stable hash of a JSON-serialisable spec (dict keys sorted)."""
    text = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def directory_digest(path: Path, length: int = 16) -> str:
    """Hash of every file's relative name and bytes under `path` (or of one file): names
    what a model directory holds, even if it was deleted and rebuilt at the same path."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ArtifactCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def work_dir(self, kind: str, spec: Any) -> Path:
        """A persistent scratch directory for building `spec` (checkpoints live here, so
        rerunning the same command resumes); removed once the artifact is complete."""
        path = self.root / kind / f"{fingerprint(spec)}.work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def exists(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / COMPLETE_MARKER).exists()

    def get_or_build(self, kind: str, spec: Any, build: Callable[[Path], None]) -> Path:
        """Return the artifact directory for `spec`, calling `build(tmp_dir)` if it is absent.

        `build` writes its files into the directory it is given; the directory becomes the
        artifact only when build returns without raising.
        """
        key = fingerprint(spec)
        final = self.path(kind, key)
        if (final / COMPLETE_MARKER).exists():
            log.info("reusing cached %s %s", kind, final)
            return final
        with file_lock(self.root / kind / f".{key}.lock"):
            if (final / COMPLETE_MARKER).exists():  # another job built it while we waited
                log.info("reusing cached %s %s (built by a concurrent job)", kind, final)
                return final
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            try:
                (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True,
                                                          default=str))
                build(tmp)
                (tmp / COMPLETE_MARKER).touch()
                if final.exists():  # a stale, incomplete artifact from a killed run
                    shutil.rmtree(final)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        log.info("built %s %s", kind, final)
        return final
