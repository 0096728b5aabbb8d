"""The fine-tuning comparison: paired per-scenario tests against base and the published fine-tuned rows."""

import pytest


def test_finetuning_comparison_pairs_per_scenario_with_the_published_rows():
    import pandas as pd

    from agreemate_lib.evaluation.comparisons import FINETUNE_PAIRS, finetuning_comparison
    from agreemate_lib.evaluation.tables import published_table
    from tests.conftest import PUBLISHED

    base = published_table(PUBLISHED / "baseline-3B-buyer+baseline-3B-seller.csv").assign(pair=FINETUNE_PAIRS["base"])
    ours = published_table(PUBLISHED / "baseline-8B-buyer+baseline-8B-seller.csv").assign(
        pair=FINETUNE_PAIRS["fine-tuned"])
    dpo = published_table(PUBLISHED / "baseline-70B-buyer+baseline-70B-seller.csv").assign(
        pair=FINETUNE_PAIRS["preference"])
    r = finetuning_comparison(pd.concat([base, ours, dpo]), PUBLISHED, n_perm=500)
    assert set(r["ours"]) == {"fine-tuned", "preference"}  # no generalist pair in the table: no row for it
    r = r[r["ours"] == "fine-tuned"]
    assert set(r["against"]) == {"base", "llama-3b fine-tuned (published)", "llama-3b generalist (published)"}
    agree = r[(r.against == "base") & (r.metric == "agreement_rate")].iloc[0]
    assert agree["n_matched"] == ours.scenario_id.nunique() >= 29  # the same listings, paired by scenario id
    diff = ours.groupby("scenario_id").agreement_rate.mean() - base.groupby("scenario_id").agreement_rate.mean()
    assert agree["mean_difference"] == pytest.approx(diff.mean())
    assert agree["ci_low"] <= agree["mean_difference"] <= agree["ci_high"] and 0 < agree["p_value"] <= 1
