"""Evaluation assets: metrics per model pair, and one table over every materialized pair."""


from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, AutomationCondition, MaterializeResult, MetadataValue, asset

from agreemate_lib.metric_tables import negotiation_table, summarize
from agreemate_lib.metrics import METRIC_NAMES
from agreemate_lib.transcripts import atomic_write_parquet, frame_to_negotiations

from ..metadata import md_table
from ..partitions import pair_partitions
from ..resources import StudySettings
from .negotiation import negotiation_transcripts, transcripts_path


def pair_metrics_path(study: StudySettings, buyer: str, seller: str) -> Path:
    return study.results_path() / "negotiation_metrics" / f"buyer={buyer}" / f"seller={seller}.parquet"


@asset(group_name="evaluation", partitions_def=pair_partitions, deps=[negotiation_transcripts], code_version="1",
       automation_condition=AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed(),
       description="Every metric of every negotiation of one model pair (corrected formulas; see docs/metrics.md).")
def negotiation_metrics(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    b, s = keys["buyer"], keys["seller"]
    src = transcripts_path(study, b, s)
    if not src.is_file():
        raise FileNotFoundError(f"transcripts for {b}|{s} missing at {src}: materialize negotiation_transcripts first")
    table = negotiation_table(frame_to_negotiations(pd.read_parquet(src)))
    path = atomic_write_parquet(table, pair_metrics_path(study, b, s))
    summary = summarize(table, "pair", n_boot=1000).iloc[0].to_dict() if len(table) else {}
    return MaterializeResult(metadata={
        "negotiations": len(table),
        **{m: float(summary.get(m, float("nan"))) for m in METRIC_NAMES},
        "parse_failure_rate": float(summary.get("parse_failure_rate", 0.0)),
        "path": MetadataValue.path(str(path)),
    })


@asset(group_name="evaluation", deps=[negotiation_metrics], code_version="1",
       description="All metrics with bootstrap 95% CIs, one row per materialized model pair.")
def metrics(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    keys = context.instance.get_materialized_partitions(AssetKey("negotiation_metrics"))
    frames = []
    for key in sorted(keys):
        b, s = key.split("|")[0], key.split("|")[1]
        p = pair_metrics_path(study, b, s)
        if p.is_file():
            frames.append(pd.read_parquet(p))
        else:
            context.log.warning(f"negotiation_metrics {key} is recorded as materialized but {p} is missing")
    per_neg = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table = summarize(per_neg, "pair") if len(per_neg) else pd.DataFrame(columns=["pair", "n", *METRIC_NAMES])
    out = study.results_path()
    atomic_write_parquet(per_neg, out / "metrics_by_negotiation.parquet")
    path = atomic_write_parquet(table, out / "metrics.parquet")
    cols = ["pair", "n", *METRIC_NAMES]
    return MaterializeResult(metadata={
        "pairs": len(table),
        "negotiations": len(per_neg),
        "path": MetadataValue.path(str(path)),
        "table": MetadataValue.md(md_table(table[cols]) if len(table) else "no pair materialized yet"),
    })
