"""The preference step (training/preference.py): pairs from real negotiations of the embedded model, and a real
DPO step on them."""

import json

import pytest

from agreemate_lib.evaluation.metrics import metric_inputs, price_contradictions
from agreemate_lib.training.preference import (
    PreferenceConfig,
    consistent_words,
    encode_pair,
    preference_pairs,
    split_pairs,
    train_preference,
)


def test_consistent_words_drops_or_replaces_only_the_contradicting_prices():
    # no price held: the sentences that name one go, the others stay as written (spacing included)
    assert consistent_words("Hi, I'm interested. I'd like to offer $6 for it. Is it new?", None, 20) == \
        "Hi, I'm interested. Is it new?"
    # "5.0" and "$5.99" do not end a sentence; a number outside 0.1 L .. 3 L (the metric's range) is not a price
    assert consistent_words("It is a 64GB 5.0 model for $320. Works well ", None, 320) == "Works well "
    assert consistent_words("It has 2 drawers. I want $300.", None, 320) == "It has 2 drawers."
    # nothing but the price: no chosen reply
    assert consistent_words("I'd pay $1406", None, 1500) is None
    # a price held: every other price named becomes it, the rest stays
    assert consistent_words("Sure. I can sell it for 2200.", 3200.0, 4000) == "Sure. I can sell it for $3,200."
    assert consistent_words("I can do $45.50, not $60.", 45.5, 60) == "I can do $45.50, not $45.50."


@pytest.fixture(scope="module")
def ft_negotiations(data_dir):
    """The first two turns of real negotiations of the shipped fine-tuned pair, with the scenarios and agents they
    came from. Its words contradict its price field most often there (seventh-session transcripts, 100 listings:
    23 buyers' openings and 13 sellers' first replies give a pair), so 24 listings give a few pairs at little cost."""
    from agreemate_lib.core.scenarios import study_scenarios
    from agreemate_lib.negotiation.agents import Agent
    from agreemate_lib.negotiation.roster import load_roster
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

    roster = load_roster(include_disabled=True)
    scen = study_scenarios("test", 24, 5, source=str(data_dir / "craigslist_bargains")).scenarios
    buyer, seller = Agent(roster["smollm2-ft-buyer"]), Agent(roster["smollm2-ft-seller"])
    cfg = RunConfig(max_turns=2, seed=1)
    return run_negotiations(scen, buyer, seller, cfg), scen, {"buyer": buyer, "seller": seller}, roster, cfg


@pytest.mark.slow
def test_pairs_rebuild_the_agents_own_prompt_and_the_chosen_reply_no_longer_contradicts(ft_negotiations):
    """Every pair's context is the prompt the agent was given at that turn (rebuilt by the runner's own state and
    the agent's own request), its rejected reply the text the model generated, and its chosen reply passes the
    metric's own rule at that turn."""
    from agreemate_lib.core.records import Negotiation, Turn
    from agreemate_lib.negotiation.runner import _Live

    negs, scen, agents, roster, cfg = ft_negotiations
    by_id = {n.negotiation_id: n for n in negs}
    scenario_of = {s.scenario_id: s for s in scen}
    pairs = []
    for role in ("buyer", "seller"):
        got, counts = preference_pairs(negs, role, roster, max_turns=cfg.max_turns)
        assert counts["pairs"] == len(got) and counts["contradicting"] >= len(got)
        pairs += got
    assert pairs, "the fine-tuned pair contradicted its price field nowhere in 24 openings: no pair to check"
    for p in pairs:
        neg = by_id[p["negotiation_id"]]
        k, role = p["turn_index"], p["role"]
        turn = neg.turns[k]
        assert p["rejected"] == turn.raw_output and turn.speaker == role
        state = _Live(Negotiation(neg.negotiation_id, neg.scenario, neg.buyer_id, neg.seller_id, neg.seed,
                                  turns=neg.turns[:k]), scenario_of[neg.scenario["scenario_id"]]).state(role, cfg)
        assert p["context"] == agents[role].requests_for([state])[0].messages
        chosen = json.loads(p["chosen"])
        assert {key: v for key, v in chosen.items() if key != "utterance"} == \
            {key: v for key, v in json.loads(p["rejected"]).items() if key != "utterance"}
        fixed = Negotiation(neg.negotiation_id, neg.scenario, neg.buyer_id, neg.seller_id, neg.seed,
                            turns=[Turn(**{**t.__dict__, "utterance": chosen["utterance"]}) if i == k else t
                                   for i, t in enumerate(neg.turns)])
        assert k in price_contradictions(metric_inputs(neg.to_outcome()))[1]
        assert k not in price_contradictions(metric_inputs(fixed.to_outcome()))[1]


@pytest.mark.slow
def test_a_dpo_step_needs_its_anchor_and_scores_only_where_the_replies_differ(ft_negotiations, tmp_path, data_dir):
    """Pairs are held out by negotiation; the supervised anchor is on by default and refused when missing; the
    shared tokens of a pair end where its replies' words first differ, after the context and the reasoning. (A real
    DPO run, from the shipped buyer adapter, is the preference_adapters materialization in tests/assets.)"""
    from transformers import AutoTokenizer

    from agreemate_lib.backends.models import resolve_model_path
    from agreemate_lib.training.splits import build_role_splits

    negs, _, _, roster, cfg = ft_negotiations
    pairs = [p for role in ("buyer", "seller") for p in preference_pairs(negs, role, roster, cfg.max_turns)[0]]
    if len(pairs) < 2:
        pytest.fail(f"{len(pairs)} pairs: too few to hold one out")
    train, held = split_pairs(pairs, 0.5, 0)
    assert train and held and not {p["negotiation_id"] for p in train} & {p["negotiation_id"] for p in held}
    rows = build_role_splits(str(data_dir / "craigslist_bargains"))["buyer"]
    val = rows[rows.split == "validation"].head(3)
    conf = PreferenceConfig(init_from="adapters/smollm2/buyer", threads=1)
    with pytest.raises(ValueError, match="anchor"):
        train_preference(pairs, val, tmp_path / "none", conf, log=lambda *_: None)
    enc = encode_pair(AutoTokenizer.from_pretrained(resolve_model_path("smollm2")), pairs[0])
    first_target = next(i for i, x in enumerate(enc["chosen"]["labels"]) if x != -100)
    assert first_target < enc["shared"] < len(enc["chosen"]["input_ids"])
