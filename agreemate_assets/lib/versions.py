"""Code versions derived from the source: an asset's ``code_version`` is a hash of the files that define what it
computes (its defs module and the library packages it calls), so an edit there makes it stale and nothing has to be
bumped by hand. What is hashed is each file's syntax tree without comments, docstrings or layout: an edit that cannot
change what the code computes (a comment, a docstring, a reflowed line) leaves the assets fresh, where the whole study
would otherwise be rerun; any other edit counts, a renamed local variable included (stale too often, never too
rarely)."""

from __future__ import annotations

import ast
import functools
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


def _code(path: Path) -> bytes:
    """The module's syntax tree, docstrings left out (comments and layout are not in it)."""
    return _tree_of(path.read_bytes())


@functools.cache
def _tree_of(source: bytes) -> bytes:
    """Parsed once per source text and process: every domain's version hashes ``agreemate_lib.core`` again, and the
    definitions load in every run worker."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value,
                                                                                                      str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def source_version(*modules: str) -> str:
    """A short hash of the code of the named modules and packages (e.g. ``"agreemate_lib.negotiation"``)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]
    for name in sorted(set(modules)):
        for f in _files(name):
            rel = f.resolve().relative_to(root) if f.resolve().is_relative_to(root) else f.name
            h.update(str(rel).encode())
            h.update(_code(f))
    return h.hexdigest()[:12]
