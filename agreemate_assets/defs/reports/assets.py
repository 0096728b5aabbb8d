"""Report assets: one asset per figure (PNG shown in the UI, HTML and Vega-Lite spec stored beside it), and the
report page."""

import base64
from pathlib import Path

import pandas as pd
from dagster import AssetIn, AssetsDefinition, MaterializeResult, MetadataValue, asset

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


@asset(group_name="reports", deps=[*figure_assets, "table3", "published_runs"], code_version=CODE_VERSION,
       kinds={"html"},
       ins={"metrics_by_negotiation": AssetIn("metrics_by_negotiation"), "transcripts": ALL_TRANSCRIPTS},
       description="One static HTML page: tables with CIs, every figure, Table 3, and a transcript browser.")
def report(study: StudySettings, results_store: ResultsStore, metrics_by_negotiation: pd.DataFrame,
           transcripts: dict[str, pd.DataFrame]) -> MaterializeResult:
    out = results_store.local_dir("report")
    path = build_report(out, metrics_by_negotiation, all_turns(transcripts, metrics_by_negotiation), published_dir(),
                        study.source(),
                        n_boot=study.bootstrap_resamples())
    return MaterializeResult(metadata={"path": MetadataValue.path(str(path)),
                                       "size_kib": round(Path(path).stat().st_size / 1024, 1)})
