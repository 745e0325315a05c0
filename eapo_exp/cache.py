"""Content-addressed artifact cache shared by runs, sweep jobs and the processes of a job.

An artifact lives in `<root>/<kind>/<fingerprint>/`. It is built in a private temporary
directory next to it and renamed into place, so readers never see a half-written artifact.
A claim file serialises two jobs that want to build the same artifact at the same time (the
second one waits and then reuses the first one's result).

Claims are files created with O_CREAT | O_EXCL, which is atomic on local disks and on
NFS (v3+) and Lustre, where `fcntl`/`flock` locks are not reliable; the holder refreshes the
file's mtime while it works, and a claim whose holder died (same host: its pid is gone;
another host: no refresh for `STALE_AFTER_S` by the waiter's own clock) is broken.

Under `accelerate launch` the main process decides whether an artifact must be built and
holds the claim; a `collective` build (one that trains or shards work) runs on every
process, the others writing into a throwaway directory; any other build runs on the main
process alone while the others wait.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from eapo_exp.errors import EapoError

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".complete"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Claim:
    """An exclusive claim on `path` that holds on shared filesystems (see module doc)."""

    def __init__(self, path: Path, poll_s: float = 0.1, stale_after_s: float = STALE_AFTER_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._seen: tuple[Any, float] | None = None  # (holder state, local time first seen)

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token},
                      handle)
        return True

    def _holder(self) -> tuple[dict, float] | None:
        try:
            mtime = self.path.stat().st_mtime
            return json.loads(self.path.read_text() or "{}"), mtime
        except (FileNotFoundError, json.JSONDecodeError):
            return None  # released, or being written right now

    def _stale(self) -> bool:
        holder = self._holder()
        if holder is None:
            self._seen = None
            return False
        info, mtime = holder
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            return not _pid_alive(info["pid"])
        state = (info.get("token"), mtime)
        now = time.monotonic()
        if self._seen is None or self._seen[0] != state:
            self._seen = (state, now)
            return False
        return now - self._seen[1] > self.stale_after_s

    def _break_stale(self) -> None:
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, aside)
            aside.unlink()
            log.warning("broke the stale claim %s (its holder is gone)", self.path)
        self._seen = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        delay = self.poll_s
        while not self._try_create():
            if self._stale():
                self._break_stale()
                continue
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        self._heartbeat = threading.Thread(target=self._beat, daemon=True,
                                           name=f"claim-heartbeat-{self.path.name}")
        self._heartbeat.start()

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        holder = self._holder()
        if holder is not None and holder[0].get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive section across processes and hosts sharing `path`'s filesystem."""
    with Claim(path):
        yield


def _complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).exists()


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
        return _complete(self.path(kind, key))

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
            if runtime.is_main and not _complete(final):
                held.enter_context(Claim(self.root / kind / f".{key}.lock"))
                if not _complete(final):
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
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
            try:
                (tmp / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True,
                                                          default=str))
                build(tmp)
                (tmp / COMPLETE_MARKER).touch()
                if final.exists():  # a stale, incomplete artifact from a killed run
                    shutil.rmtree(final)
                os.replace(tmp, final)
            except BaseException as exc:  # noqa: BLE001 (re-raised below, after telling the other processes)
                shutil.rmtree(tmp, ignore_errors=True)
                error = exc
        elif collective:  # the main process keeps its own copy of what this one writes
            with tempfile.TemporaryDirectory(prefix=f"eapo-{kind}-rank{runtime.process_index}-") \
                    as scratch:
                build(Path(scratch))
        failure = runtime.broadcast(None if error is None
                                    else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
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
