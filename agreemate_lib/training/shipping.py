"""Shipped adapters: a folder per role with the peft files and a manifest that says how they were made.

``manifest.json``: the training config, the training data's version (a content hash of the role's split), the
training metrics, and the digest of the adapter files. :func:`verify_adapter` checks the digest before an adapter is
loaded, so a folder whose weights changed without a new manifest is refused with a message naming it, never used
silently; :func:`compare_with_shipped` says whether a rebuilt adapter matches the shipped one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: Where the project's trained adapters live in the repository (one folder per base model, then per role).
SHIPPED_DIR = "adapters"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


def shipped_adapter_dir(model: str, role: str) -> Path:
    """``<repo>/adapters/<model>/<role>``: where the project's trained adapter for ``role`` on ``model`` lives."""
    from agreemate_lib.core.settings import repo_root

    return repo_root() / SHIPPED_DIR / model.replace("/", "--") / role


class AdapterDigestError(ValueError):
    """The adapter files do not match their manifest."""


def adapter_digest(folder: str | Path) -> str:
    """sha256 over the adapter's weight and config files (names and bytes), 16 hex digits."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in ADAPTER_FILES:
        f = folder / name
        if not f.is_file():
            raise FileNotFoundError(f"adapter file missing: {f}")
        h.update(name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def write_manifest(folder: str | Path, *, role: str, training_config: dict, data_version: str, metrics: dict,
                   tagger: dict | None = None) -> dict:
    """Writes ``manifest.json``. A resumed run's manifest keeps the run it resumed as ``previous`` (its own
    manifest, read from ``training_config['resume_from']``), so the whole chain of budgets stays on record; so does a
    run started from another adapter (``init_from``)."""
    folder = Path(folder)
    manifest = {"role": role, "base_model": training_config.get("model"), "digest": adapter_digest(folder),
                "data_version": data_version, "training_config": training_config, "metrics": metrics,
                "size_bytes": (folder / ADAPTER_FILES[0]).stat().st_size}
    if tagger is not None:
        manifest["tagger"] = tagger
    start = training_config.get("resume_from") or training_config.get("init_from")
    if start:  # a resumed run, or one started from another adapter's weights
        from agreemate_lib.training.lora import run_folder

        previous = read_manifest(run_folder(start))
        if previous is not None:
            manifest["previous"] = previous
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_manifest(folder: str | Path) -> dict | None:
    p = Path(folder) / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else None


def verify_adapter(folder: str | Path) -> str | None:
    """The adapter's digest, checked against its manifest where it has one; raises :class:`AdapterDigestError`
    on a mismatch. Folders without a manifest (an adapter the user trained elsewhere) pass unchecked (None)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    actual = adapter_digest(folder)
    if actual != manifest.get("digest"):
        raise AdapterDigestError(
            f"adapter {folder}: its files have digest {actual} but manifest.json says {manifest.get('digest')}; "
            "the weights changed without a new manifest. Restore them (git checkout) or retrain with the "
            "lora_adapters asset, which writes a new manifest.")
    return actual


def compare_with_shipped(rebuilt: str | Path, shipped: str | Path, atol: float = 0.0) -> dict:
    """Whether a rebuilt adapter equals the shipped one: same digest, else the largest absolute weight difference
    per tensor (bf16 training on another CPU need not give identical bytes)."""
    from safetensors.torch import load_file

    out = {"shipped": str(shipped), "rebuilt_digest": adapter_digest(rebuilt)}
    if not (Path(shipped) / ADAPTER_FILES[0]).is_file():
        return out | {"identical": False, "note": "no shipped adapter to compare with"}
    out["shipped_digest"] = adapter_digest(shipped)
    if out["rebuilt_digest"] == out["shipped_digest"]:
        return out | {"identical": True, "max_abs_diff": 0.0}
    a, b = load_file(str(Path(rebuilt) / ADAPTER_FILES[0])), load_file(str(Path(shipped) / ADAPTER_FILES[0]))
    if set(a) != set(b):
        return out | {"identical": False, "note": "different tensors", "only_rebuilt": sorted(set(a) - set(b))[:5]}
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    return out | {"identical": diff <= atol, "max_abs_diff": diff}
