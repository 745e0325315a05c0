"""A local OpenAI-compatible endpoint for ChatRec: `transformers serve` (the
`transformers[serving]` extra) on 127.0.0.1, serving a model directory, offline.

    python -m eapo_exp.chatrec.server            # the packaged SmolLM2 copy on port 8000
    eapo-exp method=chatrec chatrec.model=<the directory it prints>

The tests start one per session the same way (LocalServer) and stop it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from eapo_exp.errors import EapoError

READY_POLL_S = 0.5


class ServerError(EapoError):
    """The local server did not start."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def transformers_command() -> list[str]:
    """The `transformers` CLI of this interpreter's environment."""
    script = Path(sys.executable).with_name("transformers")
    found = str(script) if script.is_file() else shutil.which("transformers")
    if not found:
        raise ServerError("the `transformers` command is not installed next to "
                          f"{sys.executable}; install the serving extra: "
                          "pip install -e '.[chatrec]'")
    return [found]


class LocalServer:
    """`transformers serve <model_dir>` on host:port (a free port when 0), started by start()
    (which waits until /health answers) and stopped by stop(); also a context manager."""

    def __init__(self, model_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                 startup_timeout: float = 180.0, log_path: str | os.PathLike | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.model_dir = Path(model_dir).resolve()
        self.host = host
        self.port = int(port) or free_port(host)
        self.startup_timeout = float(startup_timeout)
        self.log_path = Path(log_path) if log_path else Path(
            tempfile.mkstemp(prefix="transformers-serve-", suffix=".log")[1])
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def model(self) -> str:
        """The model name requests use: the served directory."""
        return str(self.model_dir)

    def command(self) -> list[str]:
        return [*transformers_command(), "serve", str(self.model_dir), "--host", self.host,
                "--port", str(self.port), *self.extra_args]

    def start(self) -> LocalServer:
        if not (self.model_dir / "config.json").is_file():
            raise ServerError(f"{self.model_dir} holds no model (no config.json)")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log,
                                            stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        health = f"http://{self.host}:{self.port}/health"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"transformers serve exited with status "
                                  f"{self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(READY_POLL_S)
        raise ServerError(f"transformers serve did not answer {health} within "
                          f"{self.startup_timeout:g} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def default_model_dir(model_cache: str) -> Path:
    """The packaged SmolLM2-135M-Instruct copy (converted from its GGUF on first use)."""
    from eapo_exp.backbones.smollm2 import ensure_converted

    return ensure_converted(model_cache)


def main(argv: list[str] | None = None) -> None:
    cache = os.path.join(os.environ.get("EAPO_CACHE_DIR", ".cache"), "models")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="model directory (default: the SmolLM2 copy)")
    parser.add_argument("--model-cache", default=cache, help=f"default {cache}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        serve(args.model_dir or default_model_dir(args.model_cache), args.host, args.port)
    except EapoError as error:
        print(f"eapo-exp: error: {error}", file=sys.stderr)
        sys.exit(2)


def serve(model_dir: str | os.PathLike, host: str, port: int) -> None:
    """Serve until Ctrl-C, after printing the overrides that point ChatRec at it."""
    log_path = Path(tempfile.gettempdir()) / f"transformers-serve-{port}.log"
    with LocalServer(model_dir, host=host, port=port, log_path=log_path) as server:
        print(f"serving {server.model} (log: {server.log_path}); Ctrl-C stops it\n"
              f"  eapo-exp method=chatrec chatrec.base_url={server.base_url} "
              f"chatrec.model={server.model}", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
