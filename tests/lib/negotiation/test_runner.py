"""The runner's termination rules (with a scripted backend), a full rule-based run, and a real SmolLM2 run."""

import json

import pytest

from agreemate_lib.backends.base import ChatBackend, Completion
from agreemate_lib.core.scenarios import make_scenario
from agreemate_lib.negotiation.agents import Agent, AgentSpec, parse_agent_shorthand
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations


class Scripted(ChatBackend):
    """Replies from a fixed script, one per call per request (a stand-in model for termination rules)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = 0
        self.model_id = "scripted"

    def generate(self, requests, settings):
        self.calls += 1
        return [Completion(self.replies.pop(0)) for _ in requests]


def J(action, utterance="...", price=None):
    return json.dumps({"action": action, "utterance": utterance, "price": price})


SC = make_scenario("test", 0, title="Bike", description="d", category="bike", listing_price=200, buyer_target=120,
                   seller_target=200)


def run(buyer_script, seller_script, **cfg):
    b = Agent(AgentSpec(id="b", max_retries=0), Scripted(buyer_script))
    s = Agent(AgentSpec(id="s", max_retries=0), Scripted(seller_script))
    return run_negotiations([SC], b, s, RunConfig(**cfg))[0]


def test_accept_takes_the_other_sides_latest_price():
    n = run([J("offer", price=150), J("offer", price=165), J("accept")],
            [J("counter-price", price=190), J("counter-price", price=175)])
    assert n.outcome == "accepted" and n.accepted_price == 175  # the seller's latest, not the buyer's own 165
    assert n.ended_by == "buyer" and len(n.turns) == 5


def test_accept_without_standing_offer_is_an_anomaly_not_a_deal():
    n = run([J("inquire", "Is it available?")], [J("accept")])
    assert n.outcome == "no_deal" and n.accepted_price is None
    assert any(a.startswith("accept_without_offer") for a in n.anomalies)


def test_reject_and_quit_end_without_deal():
    n = run([J("offer", price=100)], [J("reject", "No.")])
    assert n.outcome == "rejected" and n.accepted_price is None and len(n.turns) == 2
    n = run([J("offer", price=100)], [J("quit")])
    assert n.outcome == "quit"


def test_turn_limit():
    n = run([J("offer", price=100), J("offer", price=110)], [J("counter-price", price=190)] * 2, max_turns=3)
    assert n.outcome == "no_deal" and len(n.turns) == 3


def test_seller_can_open():
    n = run([J("accept")], [J("init-price", price=195)], buyer_opens=False)
    assert [t.speaker for t in n.turns] == ["seller", "buyer"] and n.accepted_price == 195


def test_unusable_reply_is_retried_then_recorded():
    b = Agent(AgentSpec(id="b", max_retries=2), Scripted(["garbage", "more garbage", J("offer", price=140)]))
    s = Agent(AgentSpec(id="s", max_retries=0), Scripted([J("reject")]))
    n = run_negotiations([SC], b, s, RunConfig())[0]
    assert n.turns[0].retries == 2 and n.turns[0].parse_ok and n.turns[0].price == 140
    b = Agent(AgentSpec(id="b", max_retries=1), Scripted(["garbage", "still garbage"]))
    s = Agent(AgentSpec(id="s", max_retries=0), Scripted([J("reject")]))
    n = run_negotiations([SC], b, s, RunConfig())[0]
    t = n.turns[0]
    assert not t.parse_ok and t.action == "unknown" and t.raw_output == "still garbage" and t.error
    assert n.outcome == "rejected"  # the negotiation went on


def test_backend_exception_ends_the_negotiation_as_an_error():
    class Broken(ChatBackend):
        def generate(self, requests, settings):
            raise ConnectionError("server gone")

    b = Agent(AgentSpec(id="b", max_retries=1), Broken())
    s = Agent(AgentSpec(id="s", max_retries=0), Scripted([J("reject")]))
    n = run_negotiations([SC], b, s, RunConfig())[0]
    assert not n.turns[0].parse_ok and "server gone" in n.turns[0].error
    # a backend that raised is not a reply: the negotiation ends as an error, nothing more is asked of anyone
    assert n.outcome == "error" and "server gone" in n.error and len(n.turns) == 1 and n.turns[0].backend_error


def test_rule_based_full_run_is_deterministic(data_dir):
    from agreemate_lib.core.scenarios import sample_scenarios

    scen = sample_scenarios("test", 30, seed=0).scenarios
    rb = parse_agent_shorthand("rule-based")
    runs = [run_negotiations(scen, Agent(rb), Agent(rb), RunConfig(seed=3)) for _ in range(2)]
    assert [[(t.action, t.price) for t in n.turns] for n in runs[0]] == [
        [(t.action, t.price) for t in n.turns] for n in runs[1]]
    negs = runs[0]
    assert all(t.parse_ok for n in negs for t in n.turns)
    assert sum(n.agreed for n in negs) >= 20
    for n in negs:
        assert len(n.turns) <= 15
        if n.agreed:
            sc = n.scenario
            assert sc["seller_reservation"] <= n.accepted_price <= sc["listing_price"]


@pytest.mark.slow
def test_two_real_smollm2_negotiations(data_dir, smollm2_backend):
    """Two SmolLM2 agents, 2 scenarios, 4 turns: real batched generation, structured replies."""
    from agreemate_lib.core.scenarios import sample_scenarios

    scen = sample_scenarios("test", 2, seed=1).scenarios
    spec = AgentSpec(id="smollm2-greedy", temperature=0.0, max_utterance_tokens=24)
    b, s = Agent(spec, smollm2_backend), Agent(spec, smollm2_backend)
    negs = run_negotiations(scen, b, s, RunConfig(max_turns=4, seed=0))
    again = run_negotiations(scen, b, s, RunConfig(max_turns=4, seed=0))
    turns = [t for n in negs for t in n.turns]
    assert len(negs) == 2 and 2 <= len(turns) <= 8
    assert all(t.parse_ok and t.structured for t in turns), [t.raw_output for t in turns]
    assert all(t.tokens_in > 0 and t.tokens_out > 0 for t in turns)
    assert [t.utterance for n in negs for t in n.turns] == [t.utterance for n in again for t in n.turns]
    for n in negs:
        assert n.turns[0].action not in ("accept", "reject", "quit")  # enforced by the turn's allowed acts


@pytest.mark.slow
def test_chain_of_thought_reasoning_is_stored_and_private(data_dir, smollm2_backend):
    from agreemate_lib.core.scenarios import sample_scenarios

    scen = sample_scenarios("test", 2, seed=4).scenarios
    cot = Agent(AgentSpec(id="cot", cot=True, temperature=0.0, max_utterance_tokens=16, max_reasoning_tokens=16),
                smollm2_backend)
    plain = Agent(AgentSpec(id="plain", temperature=0.0, max_utterance_tokens=16), smollm2_backend)
    negs = run_negotiations(scen, cot, plain, RunConfig(max_turns=3, seed=0))
    buyer_turns = [t for n in negs for t in n.turns if t.speaker == "buyer"]
    assert buyer_turns and all(t.reasoning for t in buyer_turns)
    # the seller's next prompt shows the buyer's words, never its reasoning
    from agreemate_lib.negotiation.runner import _Live

    n = negs[0]
    live = _Live(n, scen[0])
    seller_view = plain.requests_for([live.state("seller", RunConfig(max_turns=3))])[0].messages
    buyer_view = cot.requests_for([live.state("buyer", RunConfig(max_turns=3))])[0].messages
    assert n.turns[0].reasoning not in " ".join(m["content"] for m in seller_view)
    assert n.turns[0].reasoning in " ".join(m["content"] for m in buyer_view)  # the buyer remembers its own
