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


def roster_path(path: str | Path | None = None) -> Path:
    return Path(path) if path else repo_root() / DEFAULT_ROSTER


def load_roster(path: str | Path | None = None, include_disabled: bool = False) -> dict[str, AgentSpec]:
    """Agents by id, in file order. Errors name the file and the entry."""
    p = roster_path(path)
    if not p.is_file():
        raise RosterError(f"roster file not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RosterError(f"{p}: not valid YAML: {exc}") from None
    entries = doc.get("agents") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise RosterError(f"{p}: expected a top-level 'agents:' list")
    defaults = doc.get("defaults") or {}
    out: dict[str, AgentSpec] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RosterError(f"{p}: agents[{i}] is not a mapping")
        try:
            spec = AgentSpec(**(defaults | entry))
        except ValidationError as exc:
            name = entry.get("id", f"agents[{i}]")
            raise RosterError(f"{p}: agent {name!r}: {exc}") from None
        if spec.id in out:
            raise RosterError(f"{p}: agent id {spec.id!r} appears twice")
        if spec.enabled or include_disabled:
            out[spec.id] = spec
    return out


def default_pairs(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The ``study.default_pairs`` of the roster file: what the main job materializes."""
    p = roster_path(path)
    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
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
