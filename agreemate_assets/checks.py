"""Great Expectations checks on the scenarios and the metrics table (transcript checks run inside their asset)."""


from typing import Iterable

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue, multi_asset_check

from agreemate_lib.evaluation.metrics import METRIC_NAMES

from .gx_validation import validate
from .resources import StudySettings

METRIC_RANGES = {  # documented in docs/metrics.md
    "agreement_rate": (0.0, 1.0),
    "dialogue_length": (1.0, None),
    "fairness": (None, 1.0),
    "aggressiveness": (None, 1.0),
    "bias": (-1.0, 1.0),
    "probing_ratio": (0.0, 1.0),
}


def _result(check: str, asset: str, outcomes, severity=AssetCheckSeverity.ERROR, **extra) -> AssetCheckResult:
    failed = [o for o in outcomes if not o.success]
    return AssetCheckResult(
        check_name=check, asset_key=asset, passed=not failed, severity=severity,
        metadata={"expectations": len(outcomes),
                  "failed": MetadataValue.json([f"{o.name}: {o.unexpected_count} rows" for o in failed]),
                  "examples": MetadataValue.json({o.name: o.examples for o in failed if o.examples}), **extra},
    )


@multi_asset_check(specs=[
    AssetCheckSpec("prices_positive", asset="scenarios", blocking=True),
    AssetCheckSpec("targets_ordered", asset="scenarios", blocking=True),
    AssetCheckSpec("ids_unique", asset="scenarios", blocking=True),
    AssetCheckSpec("text_present", asset="scenarios", blocking=True),
])
def scenarios_checks(study: StudySettings) -> Iterable[AssetCheckResult]:
    import great_expectations.expectations as gxe

    from .assets.data import scenarios_path

    df = pd.read_parquet(scenarios_path(study))
    cols = ["scenario_id", "title", "listing_price", "buyer_target", "seller_target"]
    yield _result("prices_positive", "scenarios", validate(df, [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True, max_value=1e9)
        for c in ("listing_price", "buyer_target", "seller_target", "seller_reservation")
    ] + [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("listing_price", "buyer_target", "seller_target")],
        "scenario_prices", cols), rows=len(df))
    yield _result("targets_ordered", "scenarios", validate(df, [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="seller_target", column_B="buyer_target"),
    ], "scenario_targets", cols))
    yield _result("ids_unique", "scenarios", validate(df, [
        gxe.ExpectColumnValuesToBeUnique(column="scenario_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="scenario_id"),
    ], "scenario_ids", cols))
    yield _result("text_present", "scenarios", validate(df, [
        gxe.ExpectColumnValuesToNotBeNull(column="title"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="category"),
    ], "scenario_text", cols))


@multi_asset_check(specs=[
    AssetCheckSpec("metrics_in_documented_ranges", asset="metrics"),
    AssetCheckSpec("agreement_rate_is_a_rate", asset="metrics"),
])
def metrics_checks(study: StudySettings) -> Iterable[AssetCheckResult]:
    import great_expectations.expectations as gxe

    df = pd.read_parquet(study.results_path() / "metrics.parquet")
    if df.empty:
        for name in ("metrics_in_documented_ranges", "agreement_rate_is_a_rate"):
            yield AssetCheckResult(check_name=name, asset_key="metrics", passed=True,
                                   metadata={"pairs": 0, "note": "no pair materialized yet"})
        return
    cols = ["pair", "n", *METRIC_NAMES]
    exps = [gxe.ExpectColumnValuesToBeBetween(column=m, min_value=lo, max_value=hi)
            for m, (lo, hi) in METRIC_RANGES.items() if m != "agreement_rate"]
    yield _result("metrics_in_documented_ranges", "metrics", validate(df, exps, "metric_ranges", cols),
                  severity=AssetCheckSeverity.WARN, pairs=len(df))
    yield _result("agreement_rate_is_a_rate", "metrics", validate(df, [
        gxe.ExpectColumnValuesToBeBetween(column="agreement_rate", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToNotBeNull(column="agreement_rate"),
    ], "metric_agreement", cols))
