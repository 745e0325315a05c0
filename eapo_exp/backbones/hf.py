"""Any causal LM by hub id or local path (`AutoModelForCausalLM` + `AutoTokenizer`).

Local directories and models already in the Hugging Face cache load without touching the
network. A hub id that is not cached is downloaded only when the machine may go online
(`HF_HUB_OFFLINE` unset); any failure becomes a one-line ModelError.

With CUDA present and no `device_map`, the weights load straight onto this process's GPU
(`cuda:$LOCAL_RANK`, as `accelerate launch` sets it) instead of into CPU memory first.
Attention defaults to sdpa, which takes the shared-prompt mask (training/shared_prefix.py).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from eapo_exp.backbones.attention import resolve_attention
from eapo_exp.backbones.base import (
    LoadedBackbone,
    context_limit,
    enable_checkpointing,
    prepare_tokenizer,
)
from eapo_exp.backbones.dtype import resolve_dtype
from eapo_exp.errors import ModelError

log = logging.getLogger(__name__)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached (None when it can, or when a proxy decides).

    Without this probe an unreachable Hub costs about a minute of retries before failing.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc})"
    return None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HFBackbone:
    def __init__(self, name_or_path: str, dtype: str = "auto", device_map: str | None = None,
                 gradient_checkpointing: bool = False, trust_remote_code: bool = False,
                 max_context: int = 4096, attn_implementation: str | None = "auto") -> None:
        self.name_or_path = name_or_path
        self.dtype = dtype
        self.device_map = device_map
        self.gradient_checkpointing = gradient_checkpointing
        self.trust_remote_code = trust_remote_code
        self.max_context = max_context
        self.attn_implementation = attn_implementation

    def _from_pretrained(self, local_files_only: bool):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = self._source()
        common = {"trust_remote_code": self.trust_remote_code,
                  "local_files_only": local_files_only}
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        kwargs = dict(common, dtype=resolve_dtype(self.dtype))
        device_map = self._device_map()
        if device_map:
            kwargs["device_map"] = device_map
        attention = resolve_attention(self.attn_implementation, torch.cuda.is_available())
        if attention:
            kwargs["attn_implementation"] = attention
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        return model, tokenizer

    def _device_map(self) -> str | dict | None:
        """The configured device_map, else this process's GPU when there is one."""
        if self.device_map:
            return self.device_map
        import torch

        if not torch.cuda.is_available():
            return None
        return {"": f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"}

    def _source(self) -> str:
        path = Path(self.name_or_path).expanduser()
        return str(path) if path.exists() else self.name_or_path

    def load(self, corpus: Sequence[str] = ()) -> LoadedBackbone:
        name = self.name_or_path
        if not name or not str(name).strip():
            raise ModelError("backbone.loader.name_or_path is empty: give a hub id or a "
                             "local model directory")
        path = Path(name).expanduser()
        looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
        if looks_local and not path.exists():
            raise ModelError(f"cannot load model {name!r}: no such directory")
        started = time.perf_counter()
        try:
            try:  # local dir or the HF cache: no network at all
                model, tokenizer = self._from_pretrained(local_files_only=True)
            except OSError:
                if path.exists() or _offline():
                    raise
                unreachable = _hub_unreachable()
                if unreachable:
                    raise ModelError(f"cannot load model {name!r}: it is not a local directory "
                                     f"nor in the Hugging Face cache, and {unreachable}; "
                                     "give a local path or copy the model into the cache")
                log.info("%s is not in the local Hugging Face cache; downloading", name)
                model, tokenizer = self._from_pretrained(local_files_only=False)
        except ModelError:
            raise
        except Exception as exc:
            hint = " (offline: HF_HUB_OFFLINE is set)" if _offline() and not path.exists() else ""
            raise ModelError(f"cannot load model {name!r}{hint}: {_one_line(exc)}") from exc
        if self.gradient_checkpointing:
            enable_checkpointing(model)
        model.eval()
        prepare_tokenizer(tokenizer, name)
        log.info("loaded %s (%s) in %.1f s", name, str(model.dtype).removeprefix("torch."),
                 time.perf_counter() - started)
        return LoadedBackbone(model=model, tokenizer=tokenizer,
                              name=path.name if path.exists() else name,
                              max_context=context_limit(model, self.max_context, name))
