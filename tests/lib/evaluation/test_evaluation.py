"""Evaluation and reports: Table 3 reproduction, the human baseline, figures, the HTML report."""


import pandas as pd
import pytest

from agreemate_lib.evaluation.comparisons import (
    PAPER_TABLE3,
    TABLE3_METRICS,
    paired_comparison,
    paper_table3_files,
    size_cot_files,
    table3,
)
from agreemate_lib.evaluation.human import human_baseline_table
from tests.conftest import PUBLISHED


def test_table3_reproduced_to_four_decimals():
    t = table3(PUBLISHED, paper_table3_files(), "paper", n_boot=200)
    assert dict(zip(t["cot"], t["n"])) == {False: 9, True: 26}
    for cot, expected in PAPER_TABLE3.items():
        row = t[t["cot"] == cot].iloc[0]
        for m in TABLE3_METRICS:
            assert abs(row[m] - expected[m]) <= 1e-4, (cot, m, row[m], expected[m])


def test_table3_corrected_over_36_pairs_has_cis():
    t = table3(PUBLISHED, size_cot_files(), "corrected", n_boot=200)
    assert dict(zip(t["cot"], t["n"])) == {False: 9, True: 27}
    for m in TABLE3_METRICS:
        assert (t[f"{m}_ci_low"] <= t[m]).all() and (t[m] <= t[f"{m}_ci_high"]).all()
    # the corrected concession rate is a share of the bargaining zone, not dollars
    assert t["concession_rate"].abs().max() < 1


def test_human_baseline(data_dir):
    t = human_baseline_table("validation")
    assert len(t) == 453  # dialogues with annotated intents
    assert 0.8 < t["agreement_rate"].mean() < 0.9
    assert 10 < t["dialogue_length"].mean() < 11.5
    assert set(t["pair"]) == {"human+human"}


def test_paired_comparison_names_its_test():
    rows = []
    for sid in range(12):
        rows.append({"pair": "a", "scenario_id": sid, "fairness": 0.8})
        rows.append({"pair": "b", "scenario_id": sid, "fairness": 0.2})
    r = paired_comparison(pd.DataFrame(rows), "a", "b", "fairness", n_perm=2000)
    assert r["n_matched"] == 12 and r["mean_difference"] == pytest.approx(0.6)
    assert r["p_value"] < 0.01 and "permutation" in r["test"]
