"""Code versions derived from the source: an asset's ``code_version`` is a hash of the files that define what it
computes (its defs module and the library packages it calls), so an edit there makes it stale and nothing has to be
bumped by hand. A change anywhere in those files counts, comments included: stale too often, never too rarely."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path


def _files(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module {name!r} to version")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every module in it
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def source_version(*modules: str) -> str:
    """A short hash of the source of the named modules and packages (e.g. ``"agreemate_lib.negotiation"``)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]
    for name in sorted(set(modules)):
        for f in _files(name):
            rel = f.resolve().relative_to(root) if f.resolve().is_relative_to(root) else f.name
            h.update(str(rel).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]
