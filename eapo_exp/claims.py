"""Exclusive claims that hold across processes and hosts sharing a filesystem.

A claim is a file created with O_CREAT | O_EXCL, which is atomic on local disks and on NFS
(v3+) and Lustre, where `fcntl`/`flock` locks are not reliable. The holder refreshes the
file's mtime while it works; a claim whose holder died (same host: its pid is gone; another
host: no refresh for `STALE_AFTER_S` by the waiter's own clock) is broken.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


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
