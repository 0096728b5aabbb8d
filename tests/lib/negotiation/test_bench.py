"""The bench's decode-step profile on the embedded model (a short real run)."""

import pytest


@pytest.mark.slow
def test_decode_step_profile_reports_step_and_matmul_cost(smollm2_backend):
    from agreemate_lib.negotiation.bench import decode_step_profile

    rows = decode_step_profile(smollm2_backend, batches=(1, 4), context=24, steps=2)
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["step_ms"] > 0 and r["matmul_ms"] > 0 and 0 <= r["overhead_share"] < 1
        assert r["tokens_per_s"] == pytest.approx(1000 * r["batch"] / r["step_ms"], rel=0.01)
