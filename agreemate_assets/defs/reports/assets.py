"""Report assets: one asset per figure (PNG shown in the UI, HTML and Vega-Lite spec stored beside it), and the
report page."""

import base64
from pathlib import Path

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from agreemate_lib.evaluation import figures as F
from agreemate_lib.evaluation.report import build_report

from ...lib.resources import ResultsStore, StudySettings
from ...lib.versions import source_version
from ..evaluation.assets import published_dir
from ..negotiation.assets import ALL_TRANSCRIPTS, all_turns

#: Derived from the source that defines these assets (see agreemate_assets/lib/versions.py).
CODE_VERSION = source_version(__name__, "agreemate_lib.core", "agreemate_lib.evaluation")

FIGURES = [f"heatmap_{m}" for m in F.HEATMAP_METRICS] + ["price_progression", "action_distribution",
                                                         "length_distribution", "competence"]
def with_humans(table: pd.DataFrame, turns: pd.DataFrame, study: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    from agreemate_lib.core.records import negotiations_to_frame
    from agreemate_lib.evaluation.human import human_negotiations
    from agreemate_lib.evaluation.tables import negotiation_table

    humans = human_negotiations("validation", study.source())
    return (pd.concat([table, negotiation_table(humans)], ignore_index=True),
            pd.concat([turns, negotiations_to_frame(humans)], ignore_index=True))


def png_markdown(name: str, png: Path) -> MetadataValue:
    return MetadataValue.md(f"![{name}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})")


def figure_asset(name: str) -> AssetsDefinition:
    @asset(name=f"figure_{name}", group_name="reports", deps=["human_baseline"], code_version=CODE_VERSION,
           ins={"metrics_by_negotiation": AssetIn("metrics_by_negotiation"), "transcripts": ALL_TRANSCRIPTS},
           kinds={"altair", "png"},
           description=f"Figure: {name.replace('_', ' ')} over the study's pairs and the human baseline.")
    def _figure(study: StudySettings, results_store: ResultsStore, metrics_by_negotiation: pd.DataFrame,
                transcripts: dict[str, pd.DataFrame]) -> MaterializeResult:
        table, turns = with_humans(metrics_by_negotiation, all_turns(transcripts, metrics_by_negotiation), study)
        if name in ("price_progression", "action_distribution"):
            chart = getattr(F, name)(turns)
        elif name in ("length_distribution", "competence"):
            chart = getattr(F, name)(table)
        else:
            chart = F.pair_heatmap(table, name.removeprefix("heatmap_"))
        paths = F.save_chart(chart, results_store.local_dir("figures"), name)
        return MaterializeResult(metadata={
            "figure": png_markdown(name, paths["png"]),
            "png": MetadataValue.path(str(paths["png"])),
            "html": MetadataValue.path(str(paths["html"])),
            "vega_lite_spec": MetadataValue.path(str(paths["spec"])),
            "pairs": int(table["pair"].nunique()),
        })

    return _figure


figure_assets = [figure_asset(n) for n in FIGURES]


def paper_figure_asset(name: str) -> AssetsDefinition:
    """One of the paper's figures from its published runs (corrected formulas), ours beside it where our study has
    the same grouping; drawn by the functions that draw our figures."""
    from agreemate_lib.evaluation.paper_figures import PAPER_FIGURES

    title, group = PAPER_FIGURES[name]
    ours = group is not None
    ins = {"metrics_by_negotiation": AssetIn("metrics_by_negotiation"), "transcripts": ALL_TRANSCRIPTS} if ours \
        else {}

    @asset(name=f"figure_{name}", group_name="reports", deps=["published_runs", "human_baseline"],
           code_version=CODE_VERSION, ins=ins, kinds={"altair", "png"},
           description=f"The paper's figure, redrawn from its published runs: {title}."
                       + (" Our study's pairs of the same grouping beside it; the human dialogues as a reference."
                          if ours else ""))
    def _paper_figure(study: StudySettings, results_store: ResultsStore, **inputs) -> MaterializeResult:
        from agreemate_lib.evaluation import paper_figures as PF
        from agreemate_lib.evaluation.human import human_negotiations
        from agreemate_lib.evaluation.tables import negotiation_table
        from agreemate_lib.negotiation.roster import load_roster

        table = inputs.get("metrics_by_negotiation", pd.DataFrame())
        turns = all_turns(inputs["transcripts"], table) if ours else pd.DataFrame()
        humans = negotiation_table(human_negotiations("validation", study.source()))
        data = PF.figure_data(published_dir(), table, turns, PF.roster_traits(load_roster(study.roster_file())),
                              humans)
        paths = F.save_chart(PF.paper_figure(name, data), results_store.local_dir("figures"), name)
        counts = PF.figure_sources(name, data)
        return MaterializeResult(metadata={
            "figure": png_markdown(name, paths["png"]), "png": MetadataValue.path(str(paths["png"])),
            "html": MetadataValue.path(str(paths["html"])), "vega_lite_spec": MetadataValue.path(str(paths["spec"])),
            "negotiations_by_source": MetadataValue.json(counts),
            "ours_shown": counts.get(PF.OURS, 0),
            "paper_listings": PF.figure_listings(name, data),
        })

    return _paper_figure


def _paper_figure_names() -> list[str]:
    from agreemate_lib.evaluation.paper_figures import PAPER_FIGURES

    return list(PAPER_FIGURES)


paper_figure_assets = [paper_figure_asset(n) for n in _paper_figure_names()]


def check_results(instance, partitions: list[str]) -> pd.DataFrame:
    """The latest evaluation of each negotiation_transcripts check, per partition (the report's data quality)."""
    from ..evaluation.assets import latest_check
    from ..negotiation.checks import TRANSCRIPT_CHECKS

    rows = []
    for part in sorted(partitions):
        for spec in TRANSCRIPT_CHECKS:
            check = spec.name
            ev = latest_check(instance, "negotiation_transcripts", check, part)
            row = {"partition": part, "check": check, "passed": None if ev is None else bool(ev.passed),
                   "severity": None if ev is None else ev.severity.value}
            if ev is not None:
                row["detail"] = "; ".join(f"{k}={v.value}" for k, v in ev.metadata.items()
                                          if isinstance(v.value, int | float | str) and len(str(v.value)) < 60)[:300]
            rows.append(row)
    return pd.DataFrame(rows)


def report_provenance(study: StudySettings, scenarios: pd.DataFrame) -> dict:
    """Commit, machine, versions, date; the assets' code versions, the agents' config hashes and the data versions."""
    from agreemate_assets.definitions import defs
    from agreemate_lib.core.io import frame_version
    from agreemate_lib.core.provenance import provenance
    from agreemate_lib.core.settings import repo_root
    from agreemate_lib.negotiation.roster import load_roster

    graph = defs.resolve_asset_graph()
    code_versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()
                     if graph.get(k).code_version}
    roster = load_roster(study.roster_file())
    return provenance(repo_root()) | {
        "roster": str(study.roster_file()),
        "agent_config_hashes": {a: spec.config_hash() for a, spec in roster.items()},
        "scenarios": f"split {study.split}, {len(scenarios)} scenarios, data version {frame_version(scenarios)}",
        "results": study.results_location(),
        "code_versions": code_versions,
    }


@asset(group_name="reports", deps=[*figure_assets, *paper_figure_assets, "table3", "published_runs",
                                   "probing_comparison", "figure_training_curves"],
       code_version=CODE_VERSION, kinds={"html"},
       ins={"metrics_by_negotiation": AssetIn("metrics_by_negotiation"), "transcripts": ALL_TRANSCRIPTS,
            "scenarios": AssetIn("scenarios")},
       description="One static HTML page: the paper reproduced (its figures, Table 3), our study (tables with CIs, "
                   "figures), fine-tuning, probing, data quality, provenance, and a transcript browser. Sections "
                   "whose assets are not materialized say so and name the command.")
def report(context: AssetExecutionContext, study: StudySettings, results_store: ResultsStore,
           metrics_by_negotiation: pd.DataFrame, transcripts: dict[str, pd.DataFrame],
           scenarios: pd.DataFrame) -> MaterializeResult:
    from dataclasses import replace

    from agreemate_lib.evaluation.report import report_extras

    mbn = context.instance.get_latest_materialization_event(AssetKey("metrics_by_negotiation"))
    left_out = mbn.asset_materialization.metadata["left_out_pairs"].value if mbn and "left_out_pairs" in \
        mbn.asset_materialization.metadata else []
    extras = replace(report_extras(metrics_by_negotiation, results_store.local_dir(), study.roster_file()),
                     quality=check_results(context.instance, list(transcripts)), left_out=list(left_out),
                     provenance=report_provenance(study, scenarios))
    out = results_store.local_dir("report")
    path = build_report(out, metrics_by_negotiation, all_turns(transcripts, metrics_by_negotiation), published_dir(),
                        study.source(), n_boot=study.bootstrap_resamples(), extras=extras)
    failed = extras.quality[extras.quality["passed"] == False] if len(extras.quality) else extras.quality  # noqa: E712
    return MaterializeResult(metadata={"path": MetadataValue.path(str(path)),
                                       "size_kib": round(Path(path).stat().st_size / 1024, 1),
                                       "figures": len(list((out / "figures").glob("*.png"))),
                                       "failed_checks": len(failed), "pairs_left_out": len(left_out)})
