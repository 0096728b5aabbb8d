"""The engine: KV-cache reuse across turns and shared prompt heads change speed, never the transcript."""

import pytest

from agreemate_lib.backends.prefix_cache import CachedPrefix, PrefixCache, common_prefix
from agreemate_lib.negotiation.agents import Agent, AgentSpec
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

pytestmark = pytest.mark.slow


def test_engine_matches_naive_path_exactly_in_fp32(data_dir):
    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.core.scenarios import sample_scenarios

    scen = sample_scenarios("test", 3, seed=2).scenarios
    spec = AgentSpec(id="g", temperature=0.0, max_utterance_tokens=20)
    naive = TransformersBackend("smollm2", dtype="fp32", prefix_cache=False, batch_size=1)
    engine = TransformersBackend("smollm2", dtype="fp32", prefix_cache=True)
    cfg = RunConfig(max_turns=5, seed=0)
    a = run_negotiations(scen, Agent(spec, naive), Agent(spec, naive), RunConfig(max_turns=5, seed=0, mode="naive"))
    b = run_negotiations(scen, Agent(spec, engine), Agent(spec, engine), cfg)
    assert [[(t.action, t.price, t.utterance) for t in n.turns] for n in a] == \
        [[(t.action, t.price, t.utterance) for t in n.turns] for n in b]
    pc = engine.prefix_cache
    assert pc.reused_tokens > pc.prefilled_tokens  # most prompt tokens came from the cache
    assert pc.shared  # the generic system-prompt head was computed once for all
    assert not pc.entries  # finished negotiations released their caches
    # a turn's recorded prompt tokens count only what was prefilled for it
    assert sum(t.tokens_in for n in b for t in n.turns) < sum(t.tokens_in for n in a for t in n.turns)


def test_prefix_cache_lookup_and_eviction():
    import torch

    def entry(ids, base=None):
        n = len(ids) - (base.length if base else 0)
        return CachedPrefix(ids, [torch.zeros(1, n, 2)], [torch.zeros(1, n, 2)], base)

    pc = PrefixCache(max_tokens=10, min_shared_tokens=2)
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    head = entry([1, 2, 3])
    pc.store_shared(head)
    pc.store("a", entry([1, 2, 3, 4, 5], base=head))
    e, n = pc.lookup("a", [1, 2, 3, 4, 5, 6])
    assert n == 5 and e.base is head and e.own_length == 2
    e, n = pc.lookup("b", [1, 2, 3, 9])  # a new conversation still reuses the shared head
    assert e is head and n == 3
    assert pc.lookup("a", [1, 2])[1] == 1  # always leaves one token to feed
    pc.store("c", entry(list(range(20, 30))))  # over the budget: the least recently used goes
    assert "a" not in pc.entries and "c" in pc.entries
    pc.release(["c"])
    assert not pc.entries


def test_growing_cache_writes_in_place_and_matches_concatenation():
    import torch
    from transformers.cache_utils import DynamicLayer

    from agreemate_lib.backends.kv_cache import GrowingLayer

    grow, cat = GrowingLayer(reserve=4), DynamicLayer()
    steps = [torch.randn(2, 3, n, 8) for n in (5, 1, 1, 1, 1, 1, 3)]  # a prefill, decode steps, past the room
    ptrs = set()
    for x in steps:
        k1, v1 = grow.update(x, -x)
        k2, v2 = cat.update(x, -x)
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
        ptrs.add(k1.data_ptr())
    assert len(ptrs) == 2  # one buffer for the prefill and four steps, one re-allocation when the room ran out
    grow.crop(-2)
    k, _ = grow.update(steps[1], steps[1])
    assert k.shape[2] == 12 and torch.equal(k[:, :, -1:], steps[1])
    grow.batch_select_indices(torch.tensor([1]))  # replaced views: the next update re-seeds the buffer
    k, _ = grow.update(steps[2][1:], steps[2][1:])
    assert k.shape[:3] == (1, 3, 13) and torch.equal(k[:, :, -1:], steps[2][1:])
