"""Structured generation on the embedded model: replies always follow the JSON contract."""

import json

import pytest

from agreemate_lib.backends.base import ChatRequest, GenerationSettings, ReplyFormat
from agreemate_lib.negotiation.parsing import parse_turn

pytestmark = pytest.mark.slow

MSGS = [
    {"role": "system", "content": "You are selling a mountain bike listed at $200. Reply in JSON."},
    {"role": "user", "content": "Hi, would you take $120 for the bike?"},
]


def test_sampled_replies_are_valid_json_with_vocabulary_acts(smollm2_backend):
    reqs = [ChatRequest(list(MSGS), ReplyFormat(max_utterance_tokens=20), key=f"k{i}") for i in range(6)]
    outs = smollm2_backend.generate(reqs, GenerationSettings(temperature=1.0, seed=5))
    for c in outs:
        obj = json.loads(c.text)  # valid JSON, always
        assert list(obj) == ["action", "utterance", "price"]
        t = parse_turn(c.text)
        assert t.ok and t.action_known and c.structured, c.text
        assert c.tokens_out <= 20 + 40


def test_allowed_acts_and_price_digits_are_enforced(smollm2_backend):
    fmt = ReplyFormat(max_utterance_tokens=16, allowed_acts=("counter-price",), price_digits=(3, 3))
    outs = smollm2_backend.generate([ChatRequest(list(MSGS), fmt, key="a"), ChatRequest(list(MSGS), fmt, key="b")],
                                    GenerationSettings(temperature=0.8, seed=1))
    for c in outs:
        t = parse_turn(c.text)
        assert t.action == "counter-price"
        assert t.price is not None and 100 <= t.price < 1000, c.text


def test_chain_of_thought_reasoning_comes_first(smollm2_backend):
    fmt = ReplyFormat(cot=True, max_utterance_tokens=16, max_reasoning_tokens=16, allowed_acts=("offer", "inquire"))
    c = smollm2_backend.generate([ChatRequest(list(MSGS), fmt, key="c")], GenerationSettings(temperature=0.0))[0]
    obj = json.loads(c.text)
    assert list(obj)[0] == "reasoning" and obj["reasoning"]
    assert parse_turn(c.text).reasoning == obj["reasoning"].strip()


def test_greedy_is_deterministic_and_batch_matches_single():
    """In fp32; in bf16 a different batch layout can flip a near-tie (see docs/performance.md)."""
    from agreemate_lib.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend("smollm2", dtype="fp32")
    fmt = ReplyFormat(max_utterance_tokens=16)
    greedy = GenerationSettings(temperature=0.0)
    single = backend.generate([ChatRequest(list(MSGS), fmt, key="x")], greedy)[0].text
    other = [{"role": "system", "content": "You are buying a very old and rather long sofa."},
             {"role": "user", "content": "Hello! The sofa is $300, it is in good shape and comes with cushions."}]
    batch = backend.generate([ChatRequest(list(MSGS), fmt, key="x"), ChatRequest(other, fmt, key="y")], greedy)
    assert batch[0].text == single
    assert backend.generate([ChatRequest(list(MSGS), fmt, key="x")], greedy)[0].text == single
