"""The roster file and agent config hashes."""


import pytest

from agreemate_lib.negotiation.agents import AgentSpec, parse_agent_shorthand
from agreemate_lib.negotiation.roster import RosterError, default_pairs, load_roster


def test_shipped_roster_loads_with_the_paper_grid():
    agents = load_roster(include_disabled=True)
    enabled = {k for k, v in agents.items() if v.enabled}
    assert {"smollm2", "smollm2-cot", "smollm2-aggressive", "smollm2-fair", "smollm2-passive", "rule-based"} <= enabled
    for size in ("3.2-3b", "3.1-8b", "3.3-70b"):
        assert f"llama-{size}" in agents and f"llama-{size}-cot" in agents
    assert {f"llama-3.2-3b-{p}" for p in ("aggressive", "fair", "passive")} <= set(agents)
    assert {f"llama-3.2-3b-ft-{r}" for r in ("buyer", "seller", "generalist")} <= set(agents)
    pairs = default_pairs()
    assert {a for p in pairs for a in p} == enabled  # the main job runs every enabled agent


def test_config_hash_tracks_behaviour_not_names(tmp_path):
    a = AgentSpec(id="a", temperature=0.7)
    assert a.config_hash() == AgentSpec(id="b", temperature=0.7, notes="x").config_hash()
    assert a.config_hash() != AgentSpec(id="a", temperature=0.5).config_hash()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"v1")
    spec = AgentSpec(id="ft", adapter=str(adapter))
    h1 = spec.config_hash()
    (adapter / "adapter_model.safetensors").write_bytes(b"v2")  # retrained
    assert spec.config_hash() != h1


def test_bad_roster_entries_are_named(tmp_path):
    p = tmp_path / "agents.yaml"
    p.write_text("agents:\n  - {id: Bad Id}\n")
    with pytest.raises(RosterError, match="Bad Id"):
        load_roster(p)
    p.write_text("agents:\n  - {id: ok, personality: grumpy}\n")
    with pytest.raises(RosterError, match="personality"):
        load_roster(p)
    p.write_text("agents:\n  - {id: ok}\n  - {id: ok}\n")
    with pytest.raises(RosterError, match="twice"):
        load_roster(p)
    with pytest.raises(RosterError, match="not found"):
        load_roster(tmp_path / "missing.yaml")


def test_shorthands():
    assert parse_agent_shorthand("smollm2-cot-aggressive").cot
    assert parse_agent_shorthand("openai:m@http://127.0.0.1:1/v1").backend == "openai"
    with pytest.raises(ValueError, match="unknown"):
        parse_agent_shorthand("gpt-99")
