"""Great Expectations checks on the metrics table. Range checks come from the metric registry: a metric registered
with bounds is checked against them, so a new metric is checked as soon as it is registered."""

from collections.abc import Iterable

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, AssetIn, multi_asset_check

from agreemate_lib.evaluation.metrics import METRICS, metric_names

from ...lib.gx import check_result, validate


def metric_range_expectations() -> list:
    """One GX expectation per registered metric that has bounds (the pair means obey the same bounds)."""
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(column=m.name, min_value=m.bounds[0], max_value=m.bounds[1])
            for m in METRICS.values() if m.bounds != (None, None)]


@multi_asset_check(ins={"metrics": AssetIn("metrics")}, specs=[
    AssetCheckSpec("metrics_in_documented_ranges", asset="metrics",
                   description="every registered metric within the bounds its registration states"),
    AssetCheckSpec("agreement_rate_is_a_rate", asset="metrics"),
])
def metrics_checks(metrics: pd.DataFrame) -> Iterable[AssetCheckResult]:
    import great_expectations.expectations as gxe

    df = metrics
    if df.empty:
        for name in ("metrics_in_documented_ranges", "agreement_rate_is_a_rate"):
            yield AssetCheckResult(check_name=name, asset_key="metrics", passed=True,
                                   metadata={"pairs": 0, "note": "no pair materialized yet"})
        return
    cols = ["pair", "n", *metric_names()]
    yield check_result("metrics_in_documented_ranges", "metrics",
                       validate(df, metric_range_expectations(), "metric_ranges", cols),
                       severity=AssetCheckSeverity.WARN, pairs=len(df))
    yield check_result("agreement_rate_is_a_rate", "metrics", validate(df, [
        gxe.ExpectColumnValuesToBeBetween(column="agreement_rate", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToNotBeNull(column="agreement_rate"),
    ], "metric_agreement", cols))
