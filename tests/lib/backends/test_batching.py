"""Batching across pairs: the batcher merges concurrent calls and hands each caller its own rows; pairs run together
(base and LoRA adapters mixed in one batch) produce exactly the transcripts they produce alone, in fp32."""

import os
import signal
import threading
import time

import pytest

from agreemate_lib.backends.batching import Batcher


def test_batcher_merges_the_calls_of_every_member_and_returns_each_its_own():
    b = Batcher(wait_s=5.0)
    ran: list[list] = []

    def runner(items):
        ran.append((threading.current_thread().name, list(items)))
        return [x * 10 for x in items]

    ready = threading.Barrier(3)
    out = {}

    def member(i):
        with b.member():
            ready.wait()
            out[i] = b.submit("k", i, runner)

    threads = [threading.Thread(target=member, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {0: 0, 1: 10, 2: 20}
    assert len(ran) == 1 and sorted(ran[0][1]) == [0, 1, 2]  # one batch, all three calls
    assert b.stats.max_calls == 3 and b.members == 0
    # on the process's compute thread, whichever member led (one malloc arena keeps the batches' buffers, one
    # OpenMP team runs the operators), and the freed memory was handed back after it (glibc)
    assert ran[0][0].startswith("compute") and b.stats.trim_s > 0
    assert b.submit("k", 4, runner) == 40 and ran[1][0] == ran[0][0]  # a caller alone: the same thread
    assert Batcher().submit("k", 5, runner) == 50 and ran[2][0] == ran[0][0]  # another batcher (model): the same


def test_work_sent_to_the_compute_thread_from_the_compute_thread_runs_at_once():
    from agreemate_lib.backends.batching import on_compute_thread

    def inner():
        return threading.current_thread().name

    def outer():  # on the compute thread, asking for the compute thread again: no deadlock, the same thread
        return threading.current_thread().name, on_compute_thread(inner)

    here, there = on_compute_thread(outer)
    assert here == there and here.startswith("compute") and here != threading.current_thread().name
    with pytest.raises(ZeroDivisionError):  # the work's exception is raised in the caller
        on_compute_thread(lambda: 1 / 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork: POSIX only")
def test_a_forked_child_makes_its_own_compute_thread():
    from agreemate_lib.backends.batching import on_compute_thread

    assert on_compute_thread(lambda: 2) == 2  # the parent's compute thread exists now
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread was not copied; without its own, this call would wait forever
        signal.alarm(20)
        os._exit(0 if on_compute_thread(lambda: 3) == 3 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child status {status}"


def test_batcher_keeps_other_keys_apart_and_delivers_the_runners_failure():
    b = Batcher(wait_s=5.0)
    seen = []

    def runner(items):
        seen.append(sorted(items))
        if "bad" in items:
            raise RuntimeError("backend down")
        return items

    ready = threading.Barrier(2)
    out = {}

    def member(key, item):
        with b.member():
            ready.wait()
            try:
                out[item] = b.submit(key, item, runner)
            except RuntimeError as exc:
                out[item] = str(exc)

    ts = [threading.Thread(target=member, args=("a", "good")), threading.Thread(target=member, args=("b", "bad"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert out == {"good": "good", "bad": "backend down"}
    assert sorted(seen) == [["bad"], ["good"]]  # different keys never share a batch


def test_a_member_that_never_calls_does_not_hold_the_others_beyond_the_wait():
    b = Batcher(wait_s=0.2)
    idle_joined, release = threading.Event(), threading.Event()

    def idle():
        with b.member():
            idle_joined.set()
            release.wait(10)

    t = threading.Thread(target=idle)
    t.start()
    idle_joined.wait(5)
    t0 = time.monotonic()
    assert b.submit("k", 1, lambda items: items) == 1  # ran after the wait, not never
    assert time.monotonic() - t0 < 5
    release.set()
    t.join()


@pytest.mark.slow
def test_pairs_run_together_match_pairs_run_alone_in_fp32_with_adapters_mixed(data_dir):
    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.core.scenarios import sample_scenarios
    from agreemate_lib.negotiation.agents import Agent, AgentSpec
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations, run_pairs

    scen = sample_scenarios("test", 2, seed=2).scenarios
    base = TransformersBackend("smollm2", dtype="fp32")
    fb = TransformersBackend("smollm2", dtype="fp32", adapter="adapters/smollm2/buyer")
    fs = TransformersBackend("smollm2", dtype="fp32", adapter="adapters/smollm2/seller")
    assert base.shared is fb.shared is fs.shared  # one copy of the weights, adapters injected beside the base

    def agent(i, backend, adapter=None):
        # as in the roster: the fine-tuned agents decode at repetition penalty 1.0, the base at 1.1 (per row)
        return Agent(AgentSpec(id=i, temperature=0.7, max_utterance_tokens=12, max_reasoning_tokens=12,
                               adapter=adapter, cot=bool(adapter), repetition_penalty=1.0 if adapter else 1.1),
                     backend)

    pairs = [(agent("b", base), agent("b", base)),
             (agent("fb", fb, "adapters/smollm2/buyer"), agent("fs", fs, "adapters/smollm2/seller")),
             (agent("fb", fb, "adapters/smollm2/buyer"), agent("b", base))]
    cfg = RunConfig(max_turns=2, seed=3)
    batcher = base.shared.batcher
    batcher.stats = type(batcher.stats)()  # count from here (other tests of this process use the same base)
    alone = [run_negotiations(scen, b, s, cfg) for b, s in pairs]
    before = batcher.stats.max_calls
    # together, the pairs' conversations exceed the model's cache budget: the newest entries are evicted and those
    # conversations' next prompts prefilled in full (12 conversations of ~500 tokens against 600)
    budget = base.shared.kv_budget
    limit, evicted = budget.max_tokens, budget.evicted
    budget.max_tokens = 600
    try:
        together = run_pairs([(scen, b, s) for b, s in pairs], cfg)
    finally:
        budget.max_tokens = limit
    assert budget.evicted > evicted
    # alone: one call a batch; together: all three pairs, whatever their penalties
    assert before == 1 and batcher.stats.max_calls == 3

    def text(runs):
        return [[[(t.speaker, t.action, t.price, t.utterance, t.reasoning) for t in n.turns] for n in r] for r in runs]

    assert text(together) == text(alone)
    # the adapters changed the replies: a base row never got an adapter, an adapter row never ran the base
    assert text([alone[1]]) != text([run_negotiations(scen, agent("x", base), agent("y", base), cfg)])


def test_per_row_repetition_penalty_is_transformers_own_row_by_row():
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from agreemate_lib.backends.transformers_backend import RowRepetitionPenalty

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 50, generator=g)
    ids = torch.randint(0, 50, (3, 7), generator=g)
    ids[2, 0] = 52  # an id past the output vocabulary (a larger embedding table): never penalized, never an error
    penalties = [1.1, 1.0, 1.3]
    got = RowRepetitionPenalty(penalties)(ids, scores.clone())
    for row, pen in enumerate(penalties):
        want = RepetitionPenaltyLogitsProcessor(pen)(ids[row : row + 1], scores[row : row + 1].clone())
        assert torch.equal(got[row : row + 1], want)
    assert torch.equal(got[1], scores[1])  # 1.0 leaves a row as it was
    assert not torch.equal(got[0], scores[0])


@pytest.mark.slow
def test_a_models_own_generation_config_penalty_is_not_added_to_the_agents(data_dir):
    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.core.scenarios import sample_scenarios
    from agreemate_lib.negotiation.agents import Agent, AgentSpec
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

    scen = sample_scenarios("test", 1, seed=4).scenarios
    backend = TransformersBackend("smollm2", dtype="fp32")
    spec = AgentSpec(id="g", temperature=0.0, max_utterance_tokens=24, repetition_penalty=1.0)

    def words():
        n = run_negotiations(scen, Agent(spec, backend), Agent(spec, backend), RunConfig(max_turns=2, seed=0))[0]
        return [(t.action, t.price, t.utterance) for t in n.turns]

    plain = words()
    gc = backend.model.generation_config
    try:
        gc.repetition_penalty = 3.0  # as some hub models ship (e.g. 1.05): the agent's own penalty must win
        assert words() == plain
    finally:
        gc.repetition_penalty = None
