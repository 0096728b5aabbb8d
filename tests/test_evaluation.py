"""Evaluation and reports: Table 3 reproduction, the human baseline, figures, the HTML report."""

import json
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from agreemate_lib.evaluation.comparisons import (PAPER_TABLE3, TABLE3_METRICS, paired_comparison, paper_table3_files,
                                                 size_cot_files, table3)
from agreemate_lib.evaluation.human import human_baseline_table

from .conftest import PUBLISHED


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


@pytest.mark.slow
def test_figure_and_report_assets(tmp_path, dagster_home, data_dir):
    from agreemate_assets.lib.resources import StudySettings
    from agreemate_assets.study import run_study

    roster = tmp_path / "agents.yaml"
    roster.write_text("agents:\n  - {id: rb, backend: rule-based, model: rule-based}\n"
                      "  - {id: rb-slow, backend: rule-based, model: rule-based, beta: 0.3}\n")
    study = StudySettings(results_dir=str(tmp_path / "results"), roster_path=str(roster), n_scenarios=3,
                          max_turns=8)
    with DagsterInstance.get() as instance:
        ok = run_study(instance, study, [("rb", "rb-slow"), ("rb-slow", "rb")], log=lambda *_: None,
                       with_reports=True)
        assert all(ok.values())
        figs = Path(study.results_dir) / "figures"
        for name in ("heatmap_agreement_rate", "heatmap_bias", "heatmap_fairness", "heatmap_aggressiveness",
                     "heatmap_dialogue_length", "price_progression", "action_distribution", "length_distribution"):
            spec = json.loads((figs / f"{name}.vl.json").read_text())
            assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
            png = (figs / f"{name}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
            ev = instance.get_latest_materialization_event(AssetKey(f"figure_{name}"))
            assert "data:image/png;base64," in ev.asset_materialization.metadata["figure"].value
        hb = instance.get_latest_materialization_event(AssetKey("human_baseline")).asset_materialization.metadata
        assert 0.8 < hb["agreement_rate"].value < 0.9
        t3 = instance.get_latest_materialization_event(AssetKey("table3")).asset_materialization.metadata
        assert t3["max_abs_diff_vs_paper"].value <= 1e-4
        html = (Path(study.results_dir) / "report" / "report.html").read_text()
        for needle in ("Transcript browser", "Table 3 reproduced", "human+human", "rb+rb-slow", "data:image/png"):
            assert needle in html
