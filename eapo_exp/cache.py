"""Content-addressed artifact cache shared by runs, sweep jobs and the processes of a job.

An artifact lives in `<root>/<kind>/<fingerprint>/`. It is built in a private temporary
directory next to it and renamed into place, so readers never see a half-written artifact.
A claim file serialises two jobs that want to build the same artifact at the same time (the
second one waits and then reuses the first one's result).

Claims are eapo_exp.claims.Claim files (atomic on NFS and Lustre too).

A complete artifact records every file's size and SHA-256 (`.manifest.json`). Reuse checks
the sizes every time and the checksums once per process; a damaged artifact is moved aside
(`.damaged-<key>-<time>`, kept for a look) and rebuilt, with one line saying so.

Under `accelerate launch` the main process decides whether an artifact must be built and
holds the claim; a `collective` build (one that trains or shards work) runs on every
process, the others writing into a throwaway directory; any other build runs on the main
process alone while the others wait.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from eapo_exp.claims import Claim
from eapo_exp.errors import EapoError

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
MANIFEST = ".manifest.json"


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


def _complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).exists()


class ArtifactError(EapoError):
    """An artifact cannot be read or written; the message names its directory."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _artifact_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()
                  and p.name not in (COMPLETE_MARKER, MANIFEST))


def write_manifest(directory: Path) -> None:
    files = {str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _artifact_files(directory)}
    (directory / MANIFEST).write_text(json.dumps(files, indent=1, sort_keys=True))


def manifest_problem(directory: Path, checksums: bool) -> str | None:
    """What is wrong with a complete artifact's files, or None. Artifacts written before
    manifests existed are trusted on their completion marker."""
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    for name, expected in files.items():
        file = directory / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, {expected['size']} expected"
        if checksums and file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


@contextlib.contextmanager
def disk_errors(path: Path, setting: str = "paths.cache_dir") -> Iterator[None]:
    """Read-only, permission and full-disk faults as one line naming the path and setting."""
    try:
        yield
    except OSError as err:
        if err.errno not in DISK_FAULTS:
            raise
        raise ArtifactError(describe_os_error(err, path, setting)) from None
    except RuntimeError as err:  # torch.save reports a full disk as "unexpected pos ..."
        if "unexpected pos" in str(err) or "file write failed" in str(err):
            raise ArtifactError(describe_os_error(OSError(errno.ENOSPC, "No space left on "
                                                          "device"), path, setting)) from None
        raise


DISK_FAULTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}


@contextlib.contextmanager
def reading(artifact: Path) -> Iterator[None]:
    """A file of `artifact` that cannot be loaded becomes one line naming the artifact."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as err:
        raise ArtifactError(f"cannot read the cached artifact {artifact} ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]}); delete it to rebuild") from None


def describe_os_error(err: OSError, path: Path, setting: str) -> str:
    where = getattr(err, "filename", None) or path
    reason = DISK_FAULTS.get(err.errno, err.strerror or str(err))
    return f"cannot write {where}: {reason}; free space there or set {setting} to a writable place"


class ArtifactCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()
        self._verified: set[Path] = set()  # checksummed by this process

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def work_dir(self, kind: str, spec: Any) -> Path:
        """A persistent scratch directory for building `spec` (checkpoints live here, so
        rerunning the same command resumes); removed once the artifact is complete. Not
        created here: a job that reuses everything needs no write access to the cache."""
        return self.root / kind / f"{fingerprint(spec)}.work"

    def exists(self, kind: str, key: str) -> bool:
        return self._usable(kind, self.path(kind, key))

    def _usable(self, kind: str, final: Path) -> bool:
        """Complete and undamaged; a damaged artifact is moved aside (it will be rebuilt)."""
        if not _complete(final):
            return False
        problem = manifest_problem(final, checksums=final not in self._verified)
        if problem is None:
            self._verified.add(final)
            return True
        aside = final.with_name(f".damaged-{final.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(final, aside)
        except OSError as err:
            raise ArtifactError(f"{kind} artifact {final} is damaged ({problem}) and cannot be "
                                f"moved aside ({err.strerror}); delete it to rebuild") from None
        log.warning("%s artifact %s is damaged (%s): moved to %s, rebuilding", kind, final,
                    problem, aside.name)
        return False

    def get_or_build(self, kind: str, spec: Any, build: Callable[[Path], None],
                     runtime=None, collective: bool = False) -> Path:
        """Return the artifact directory for `spec`, calling `build(tmp_dir)` if it is absent.

        `build` writes its files into the directory it is given; the directory becomes the
        artifact only when build returns without raising. With a distributed `runtime`,
        `collective=True` runs `build` on every process (it trains or shards work); otherwise
        on the main process only. Every process returns the same directory.
        """
        from eapo_exp.distributed import default_runtime

        runtime = runtime or default_runtime()
        key = fingerprint(spec)
        final = self.path(kind, key)
        with contextlib.ExitStack() as held:
            decision = "reuse"
            if runtime.is_main and not self._usable(kind, final):
                with disk_errors(self.root / kind):
                    held.enter_context(Claim(self.root / kind / f".{key}.lock"))
                if not self._usable(kind, final):
                    decision = "build"
                    self._remove_stale_temps(final)
                else:
                    log.info("%s %s was built by a concurrent job", kind, final)
            if runtime.broadcast(decision) == "build":
                self._build(kind, spec, final, build, runtime, collective)
                if runtime.is_main:
                    log.info("built %s %s", kind, final)
            elif runtime.is_main:
                log.info("reusing cached %s %s", kind, final)
        return final

    def _build(self, kind: str, spec: Any, final: Path, build: Callable[[Path], None],
               runtime, collective: bool) -> None:
        error = None
        if runtime.is_main:
            with disk_errors(final.parent):
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
            try:
                with disk_errors(tmp):
                    (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True,
                                                              default=str))
                    build(tmp)
                    write_manifest(tmp)
                    (tmp / COMPLETE_MARKER).touch()
                    tmp.chmod(0o755)  # mkdtemp makes it private; a cluster's cache is shared
                if final.exists():  # a stale, incomplete artifact from a killed run
                    shutil.rmtree(final)
                os.replace(tmp, final)
            except BaseException as exc:  # noqa: BLE001 (re-raised below, after telling the other processes)
                shutil.rmtree(tmp, ignore_errors=True)  # no partial artifact is left behind
                error = exc
        elif collective:  # the main process keeps its own copy of what this one writes
            with tempfile.TemporaryDirectory(prefix=f"eapo-{kind}-rank{runtime.process_index}-") \
                    as scratch:
                build(Path(scratch))
        failure = runtime.broadcast(None if error is None
                                    else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        self._verified.add(final)
        if failure is not None:
            raise EapoError(f"the main process failed to build {kind} {final}: {failure}")

    @staticmethod
    def _remove_stale_temps(final: Path) -> None:
        """Build directories of killed jobs (only the claim holder may build, so any that
        exist are dead)."""
        if final.parent.exists():
            for leftover in final.parent.glob(f".{final.name}.*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
