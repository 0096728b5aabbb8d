"""The figure and report assets, materialized by the main job's code into a temporary instance."""

import json
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance


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
        from agreemate_lib.evaluation.paper_figures import PAPER_FIGURES

        for name in PAPER_FIGURES:
            meta = instance.get_latest_materialization_event(AssetKey(f"figure_{name}")).asset_materialization.metadata
            assert "data:image/png;base64," in meta["figure"].value
            shown = meta["negotiations_by_source"].value
            # the paper's grid on all its 30 listings; the grouped figures on the 3 listings this study negotiated
            assert meta["paper_listings"].value == (30 if name == "paper_size_cot" else 3), name
            assert shown["paper (published Llama runs)"] >= (38 * 30 if name == "paper_size_cot" else 9), name
            assert meta["ours_shown"].value == 0  # rule-based agents belong to none of the paper's groupings
            assert (figs / f"{name}.vl.json").is_file() and (figs / f"{name}.html").is_file()
        report = Path(study.results_dir) / "report" / "report.html"
        html = report.read_text()
        for needle in ("The paper reproduced", "Our study", "Fine-tuning", "Probing", "Data quality", "Provenance",
                       "Transcript browser", "Table 3 reproduced", "human+human", "rb+rb-slow", "data:image/png",
                       "transcripts_valid", "agent_config_hashes", "cpu_model"):
            assert needle in html, needle
        # nothing was probed and no adapter is in this roster: those sections say so and name the command
        assert html.count("Not materialized") >= 2 and "probing_outputs" in html and "agreemate train" in html
        meta = instance.get_latest_materialization_event(AssetKey("report")).asset_materialization.metadata
        assert meta["failed_checks"].value == 0 and meta["figures"].value >= len(PAPER_FIGURES) + 8

        # in a real browser: every image loads, every interactive chart renders, no console error
        from tests.browser import Browser, check_report_in_browser

        with Browser() as browser:
            seen = check_report_in_browser(report, browser)
        assert seen["images"] == meta["figures"].value
        assert len(seen["charts"]) == seen["images"] and all(v > 0 for v in seen["charts"].values())
        assert seen["transcript_browser_chars"] > 100
