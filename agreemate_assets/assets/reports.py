"""Report assets: one asset per figure (PNG shown in the UI, HTML and Vega-Lite spec on disk), and the report."""

import base64
from pathlib import Path

import pandas as pd
from dagster import AssetsDefinition, MaterializeResult, MetadataValue, asset

from agreemate_lib.evaluation import figures as F
from agreemate_lib.evaluation.report import build_report, load_study

from ..resources import StudySettings
from .evaluation import human_baseline, metrics, published_dir, published_runs, table3

FIGURES = [f"heatmap_{m}" for m in F.HEATMAP_METRICS] + ["price_progression", "action_distribution",
                                                         "length_distribution"]


def _study_with_humans(study: StudySettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    from agreemate_lib.evaluation.comparisons import human_negotiations
    from agreemate_lib.evaluation.tables import negotiation_table
    from agreemate_lib.core.records import negotiations_to_frame

    table, turns = load_study(study.results_path())
    humans = human_negotiations("validation", study.source())
    return (pd.concat([table, negotiation_table(humans)], ignore_index=True),
            pd.concat([turns, negotiations_to_frame(humans)], ignore_index=True))


def figure_asset(name: str) -> AssetsDefinition:
    @asset(name=f"figure_{name}", group_name="reports", deps=[metrics, human_baseline], code_version="1",
           description=f"Figure: {name.replace('_', ' ')} over the study's pairs and the human baseline.")
    def _figure(study: StudySettings) -> MaterializeResult:
        table, turns = _study_with_humans(study)
        if name in ("price_progression", "action_distribution"):
            chart = getattr(F, name)(turns)
        elif name == "length_distribution":
            chart = F.length_distribution(table)
        else:
            chart = F.pair_heatmap(table, name.removeprefix("heatmap_"))
        paths = F.save_chart(chart, study.results_path() / "figures", name)
        png = base64.b64encode(paths["png"].read_bytes()).decode()
        return MaterializeResult(metadata={
            "figure": MetadataValue.md(f"![{name}](data:image/png;base64,{png})"),
            "png": MetadataValue.path(str(paths["png"])),
            "html": MetadataValue.path(str(paths["html"])),
            "vega_lite_spec": MetadataValue.path(str(paths["spec"])),
            "pairs": int(table["pair"].nunique()),
        })

    return _figure


figure_assets = [figure_asset(n) for n in FIGURES]


@asset(group_name="reports", deps=[*figure_assets, table3, published_runs], code_version="1",
       description="One static HTML page: tables with CIs, every figure, Table 3, and a transcript browser.")
def report(study: StudySettings) -> MaterializeResult:
    out = study.results_path() / "report"
    path = build_report(study.results_path(), out, published_dir(), study.source())
    return MaterializeResult(metadata={"path": MetadataValue.path(str(path)),
                                       "size_kib": round(Path(path).stat().st_size / 1024, 1)})
