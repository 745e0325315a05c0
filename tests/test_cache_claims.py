"""Artifact claims that hold on shared filesystems (O_EXCL files + heartbeat), and their
recovery from holders that died: same host (pid gone) or another host (no heartbeat)."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

from eapo_exp.claims import Claim


def test_claim_excludes_a_second_holder_until_released(tmp_path):
    path = tmp_path / "a.lock"
    first = Claim(path)
    first.acquire()
    got_it = threading.Event()

    def second():
        with Claim(path, poll_s=0.01):
            got_it.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    time.sleep(0.3)
    assert not got_it.is_set()
    first.release()
    waiter.join(timeout=5)
    assert got_it.is_set() and not path.exists()


def test_claim_of_a_dead_process_on_this_host_is_broken_at_once(tmp_path):
    path = tmp_path / "a.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                "token": "killed-job"}))
    started = time.monotonic()
    with Claim(path, poll_s=0.01):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert time.monotonic() - started < 2


def test_claim_of_another_host_is_broken_only_without_heartbeat(tmp_path):
    path = tmp_path / "a.lock"
    path.write_text(json.dumps({"host": "node-that-died", "pid": 1, "token": "t"}))
    started = time.monotonic()
    with Claim(path, poll_s=0.02, stale_after_s=0.5):
        waited = time.monotonic() - started
    assert 0.5 <= waited < 5


def hold_with_heartbeat(path: str, seconds: float) -> None:
    with Claim(path, heartbeat_s=0.05):
        time.sleep(seconds)


def test_live_holder_on_another_host_keeps_its_claim(tmp_path):
    """A holder that refreshes its claim is never judged stale, however long it works."""
    path = tmp_path / "a.lock"
    holder = multiprocessing.get_context("spawn").Process(target=hold_with_heartbeat,
                                                            args=(str(path), 2.0))
    holder.start()
    # The holder creates the file, then writes its JSON: wait for both.
    while not path.exists() or not path.read_text():
        time.sleep(0.01)
    # Seen from another host: the pid check cannot apply, only the heartbeat can.
    info = json.loads(path.read_text())
    path.write_text(json.dumps({**info, "host": "elsewhere"}))
    started = time.monotonic()
    with Claim(path, poll_s=0.02, stale_after_s=0.5):
        waited = time.monotonic() - started
    holder.join()
    assert waited >= 1.0  # waited for the holder, not the 0.5 s staleness limit
