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
    p.write_text("agents:\n  - {id: Bad Id, model: smollm2}\n")
    with pytest.raises(RosterError, match="Bad Id"):
        load_roster(p)
    p.write_text("agents:\n  - {id: ok, model: smollm2, personality: grumpy}\n")
    with pytest.raises(RosterError, match="personality"):
        load_roster(p)
    p.write_text("agents:\n  - {id: ok, model: smollm2}\n  - {id: ok, model: smollm2}\n")
    with pytest.raises(RosterError, match="twice"):
        load_roster(p)
    with pytest.raises(RosterError, match="not found"):
        load_roster(tmp_path / "missing.yaml")


def test_shorthands():
    assert parse_agent_shorthand("smollm2-cot-aggressive").cot
    assert parse_agent_shorthand("openai:m@http://127.0.0.1:1/v1").backend == "openai"
    with pytest.raises(ValueError, match="unknown"):
        parse_agent_shorthand("gpt-99")


@pytest.mark.parametrize("text,message", [
    ("agents:\n  - {id: a, model: smollm2}\n  - {id: b, model: smollm2, temperature: 0.5, temperature: 0.9}\n",
     "key 'temperature' appears twice"),
    ("agents:\n  - {id: a, model: smollm2, temperature: -3}\n", "(?s)agent 'a'.*temperature.*greater than or equal"),
    ("agents:\n  - {id: a, model: smollm2, top_p: 1.5}\n", "(?s)agent 'a'.*top_p.*less than or equal"),
    ("defaults:\n  - temperature: 0.5\nagents:\n  - {id: a, model: smollm2}\n", "'defaults:' must be a mapping"),
    ("study:\n  - [a, a]\nagents:\n  - {id: a, model: smollm2}\n", "'study:' must be a mapping"),
    ("agents:\n  - {id: a, backend: transformers}\n", "agent 'a': backend 'transformers' needs a model"),
    ("agents:\n  - {id: a, backend: openai, base_url: 'http://x'}\n", "agent 'a': backend 'openai' needs a model"),
    ("agents:\n  - {id: a, backend: vllm9, model: m}\n", "agent 'a': unknown backend 'vllm9'"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_rosters_name_the_place(tmp_path, text, message):
    p = tmp_path / "agents.yaml"
    p.write_text(text)
    with pytest.raises(RosterError, match=message) as info:
        load_roster(p)
    assert str(p) in str(info.value)


def test_metrics_cli_names_missing_columns(tmp_path, capsys):
    import pandas as pd

    from agreemate_lib.cli.main import main

    bad = tmp_path / "not_transcripts.parquet"
    pd.DataFrame({"negotiation_id": ["x"], "price": [1.0]}).to_parquet(bad)
    assert main(["metrics", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing columns" in err and "buyer_id" in err
