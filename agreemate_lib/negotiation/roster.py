"""The agent roster: a versioned YAML file in the repo declaring every agent of a study."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from agreemate_lib.core.settings import repo_root
from agreemate_lib.negotiation.agents import AgentSpec, parse_agent_shorthand

DEFAULT_ROSTER = "agents.yaml"


class RosterError(ValueError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (YAML would keep the last one silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping (first at line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_roster_file(p: Path) -> dict:
    """The roster document, checked for its shape: a mapping with an ``agents:`` list, ``defaults:`` and
    ``study:`` mappings when present. Errors name the file and the place."""
    if not p.is_file():
        raise RosterError(f"roster file not found: {p}")
    try:
        doc = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise RosterError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise RosterError(f"{p}: expected a mapping with an 'agents:' list at the top, got {type(doc).__name__}")
    for section in ("defaults", "study"):
        if doc.get(section) is not None and not isinstance(doc[section], dict):
            raise RosterError(f"{p}: '{section}:' must be a mapping of settings, got a {type(doc[section]).__name__}")
    if not isinstance(doc.get("agents"), list):
        raise RosterError(f"{p}: expected a top-level 'agents:' list")
    return doc


def roster_path(path: str | Path | None = None) -> Path:
    return Path(path) if path else repo_root() / DEFAULT_ROSTER


def load_roster(path: str | Path | None = None, include_disabled: bool = False) -> dict[str, AgentSpec]:
    """Agents by id, in file order. Errors name the file and the entry."""
    p = roster_path(path)
    doc = read_roster_file(p)
    entries = doc["agents"]
    defaults = doc.get("defaults") or {}
    out: dict[str, AgentSpec] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RosterError(f"{p}: agents[{i}] is not a mapping")
        name = entry.get("id", f"agents[{i}]")
        merged = defaults | entry
        backend = merged.get("backend", "transformers")
        try:
            from agreemate_lib.backends.registry import backend_class

            needs_model = backend_class(backend).needs_model
        except ValueError as exc:
            raise RosterError(f"{p}: agent {name!r}: {exc}") from None
        if needs_model and not merged.get("model"):
            raise RosterError(f"{p}: agent {name!r}: backend {backend!r} needs a model: write model: smollm2 (the "
                              "embedded model), a local path or a hub id (nothing is assumed)")
        try:
            spec = AgentSpec(**merged)
        except ValidationError as exc:
            raise RosterError(f"{p}: agent {name!r}: {exc}") from None
        if spec.id in out:
            raise RosterError(f"{p}: agent id {spec.id!r} appears twice")
        if spec.enabled or include_disabled:
            out[spec.id] = spec
    return out


def default_pairs(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The ``study.default_pairs`` of the roster file: what the main job materializes."""
    p = roster_path(path)
    doc = read_roster_file(p)
    pairs = ((doc.get("study") or {}).get("default_pairs")) or []
    agents = load_roster(p)
    out = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RosterError(f"{p}: study.default_pairs[{i}] must be [buyer, seller], got {pair!r}")
        for a in pair:
            if a not in agents:
                raise RosterError(f"{p}: study.default_pairs[{i}] names {a!r}, which is not an enabled agent")
        out.append((pair[0], pair[1]))
    return out


def resolve_agent(name: str, roster: str | Path | None = None) -> AgentSpec:
    """A roster id (when the roster has it) or a CLI shorthand (see :func:`parse_agent_shorthand`)."""
    p = roster_path(roster)
    if p.is_file():
        agents = load_roster(p, include_disabled=True)
        if name in agents:
            return agents[name]
    return parse_agent_shorthand(name)
