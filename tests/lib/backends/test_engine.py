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
    naive = TransformersBackend("smollm2", dtype="fp32", prefix_cache=False, batch_size=1, decoder="generate")
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


def test_engine_decode_loop_drops_ended_rows_and_equals_generate_sampled_in_fp32(data_dir):
    """The engine's own loop (rows leave the batch as they end, their caches kept for the next turn; forced tokens
    fed in the step before theirs) against transformers' generate, both batched with KV reuse, sampling per row at
    0.7 under a repetition penalty."""
    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.core.scenarios import sample_scenarios

    scen = sample_scenarios("test", 4, seed=3).scenarios
    spec = AgentSpec(id="s", temperature=0.7, max_utterance_tokens=24, repetition_penalty=1.1)
    runs = {}
    for decoder in ("generate", "engine"):  # the engine with forced tokens jumping forward (4 rows: up to 4 a row)
        backend = TransformersBackend("smollm2", dtype="fp32", decoder=decoder, jump_budget=16)
        runs[decoder] = (backend, run_negotiations(scen, Agent(spec, backend), Agent(spec, backend),
                                                   RunConfig(max_turns=4, seed=5)))
    (_, a), (engine, b) = runs["generate"], runs["engine"]
    assert [[(t.action, t.price, t.utterance, t.tokens_in, t.tokens_out) for t in n.turns] for n in a] == \
        [[(t.action, t.price, t.utterance, t.tokens_in, t.tokens_out) for t in n.turns] for n in b]
    st = engine.stats
    assert st["decode_compactions"] > 0 and st["decode_retired"] > 0  # rows did leave early
    assert st["decode_forced_tokens"] > 0  # forced tokens were fed in the step before theirs
    assert st["decode_live_row_steps"] <= st["decode_row_steps"] < st["decode_steps"] * len(scen)
    assert engine.prefix_cache.reused_tokens > engine.prefix_cache.prefilled_tokens  # retired rows' caches served


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
    pc.store("c", entry(list(range(20, 30))))  # over the cache's limit: the new entry is not kept, "a" keeps its own
    assert "a" in pc.entries and "c" not in pc.entries and pc.evicted == 1
    pc.release(["a"])
    assert not pc.entries


def test_one_budget_bounds_every_cache_on_a_model_newest_entry_first():
    import threading

    import torch

    from agreemate_lib.backends.prefix_cache import KVBudget

    def entry(n):
        return CachedPrefix(list(range(n)), [torch.zeros(1, n, 2)], [torch.zeros(1, n, 2)])

    budget = KVBudget(max_tokens=25)
    a, b = PrefixCache(max_tokens=100, budget=budget), PrefixCache(max_tokens=100, budget=budget)

    def held():  # what the caches really keep, not the budget's own count (one moment: under the shared lock)
        with budget.lock:
            return a.total_tokens() + b.total_tokens()

    a.store("x", entry(10))
    b.store("y", entry(10))
    b.store("z", entry(10))  # 30 > 25: z goes (the newest), x and y keep theirs for their next turns
    assert set(a.entries) == {"x"} and set(b.entries) == {"y"} and held() == 20 and budget.evicted == 1
    a.store("x", entry(12))  # a conversation's next turn replaces its entry, never counts twice
    assert held() == 22 == budget.tokens
    a.store("x", entry(16))  # grown past the limit: x is now the newest and goes; y stays
    assert not a.entries and set(b.entries) == {"y"} and held() == 10 == budget.tokens and budget.evicted == 2
    b.store("y", entry(120))  # past b's own limit (100): not kept, and its old entry leaves the budget too
    assert not b.entries and held() == 0 == budget.tokens and b.evicted == 1
    b.store("y", entry(10))
    b.release(["y"])
    assert held() == 0 == budget.tokens
    # released while another thread stores: every store keeps the sum within the limit
    errors = []

    def churn(cache, tag):
        try:
            for i in range(300):
                cache.store(f"{tag}{i % 7}", entry(3 + i % 5))
                assert held() <= 25
                cache.release([f"{tag}{(i + 3) % 7}"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(c, t)) for c, t in ((a, "p"), (b, "q"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and held() == budget.tokens <= 25


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
    kept = k[1:].clone()
    grow.batch_select_indices(torch.tensor([1]))  # ended rows leave the batch: the kept one keeps its room ahead
    assert torch.equal(grow.keys, kept)
    ptr = grow.keys.data_ptr()
    k, _ = grow.update(steps[2][1:], steps[2][1:])
    assert k.shape[:3] == (1, 3, 13) and torch.equal(k[:, :, -1:], steps[2][1:]) and torch.equal(k[:, :, :-1], kept)
    assert k.data_ptr() == ptr  # written in place, no re-allocation
