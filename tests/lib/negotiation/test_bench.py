"""The bench's decode-step profile on the embedded model (a short real run)."""

import pytest


@pytest.mark.slow
def test_decode_step_profile_reports_step_and_matmul_cost(smollm2_backend):
    from agreemate_lib.negotiation.bench import decode_step_profile

    rows = decode_step_profile(smollm2_backend, batches=(1, 4), context=24, steps=2)
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["step_ms"] > 0 and r["matmul_ms"] > 0 and 0 <= r["overhead_share"] <= 1
        # tokens/s is rounded to 0.1: a slow step (a busy machine: 494 ms at 1 row) gives 2.0 for 2.02
        assert r["tokens_per_s"] == pytest.approx(1000 * r["batch"] / r["step_ms"], rel=0.01, abs=0.051)
        assert r["step_ms_cache_in_place"] > 0 and 0 <= r["overhead_share_cache_in_place"] <= 1
        # the bare matrix work is the linear layers plus the attention kernel, each timed on its own
        assert r["linear_ms"] > 0 and r["attention_ms"] > 0
        assert r["matmul_ms"] == pytest.approx(r["linear_ms"] + r["attention_ms"], abs=0.02)
        assert r["linear_ms_int4"] > 0  # the CPU's 4-bit weight-only kernel on the same layers (torch 2.13 has it)


@pytest.mark.slow
def test_step_op_profile_splits_a_step_by_operator(smollm2_backend):
    from agreemate_lib.negotiation.bench import step_op_profile

    p = step_op_profile(smollm2_backend, batch=2, context=24, steps=2, top=5)
    assert len(p["ops"]) == 5 and p["operator_ms"] > 0 and p["python_ms"] >= 0 and p["step_ms"] > 0
    assert p["python_ms"] == pytest.approx(max(0.0, p["step_ms"] - p["operator_ms"]), abs=0.02)
    assert [o["ms_per_step"] for o in p["ops"]] == sorted((o["ms_per_step"] for o in p["ops"]), reverse=True)
    assert sum(o["share"] for o in p["ops"]) <= 1.001
    # every step multiplies by the linear layers' weights: the matrix product is among the operators
    assert any(o["op"] in ("aten::mm", "aten::addmm", "aten::bmm") for o in p["ops"])


@pytest.mark.slow
def test_across_pairs_runs_pairs_alone_then_together(data_dir):
    from agreemate_lib.core.scenarios import sample_scenarios
    from agreemate_lib.negotiation.bench import across_pairs
    from agreemate_lib.negotiation.runner import RunConfig

    r = across_pairs(sample_scenarios("test", 2, seed=0).scenarios, RunConfig(max_turns=2), 2, "auto")
    assert r["pairs"] == 2
    assert r["one_after_another"]["negotiations"] == r["together"]["negotiations"] == 4
    assert r["rows_per_batch_together"] > 2  # both pairs' rows went into one batch
    for way in ("one_after_another", "together"):  # where the time went, from the model's own forward timers
        w = r[way]
        assert w["prefill_s"] > 0 and w["decode_s"] > 0 and w["decode_steps"] > 0
        assert w["prefill_s"] + w["decode_s"] <= w["wall_s"]
    # together, each step carries both pairs' rows: fewer steps than one pair after the other
    assert r["together"]["decode_steps"] < r["one_after_another"]["decode_steps"]
    assert r["speedup"] == pytest.approx(r["together"]["negotiations_per_min"]
                                         / r["one_after_another"]["negotiations_per_min"], rel=0.02)
