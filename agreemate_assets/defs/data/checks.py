"""Great Expectations checks on the scenario sample: prices, targets, ids, text."""

from collections.abc import Iterable

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSpec, AssetIn, multi_asset_check

from ...lib.gx import check_result, validate


@multi_asset_check(ins={"scenarios": AssetIn("scenarios")}, specs=[
    AssetCheckSpec("prices_positive", asset="scenarios", blocking=True),
    AssetCheckSpec("targets_ordered", asset="scenarios", blocking=True),
    AssetCheckSpec("ids_unique", asset="scenarios", blocking=True),
    AssetCheckSpec("text_present", asset="scenarios", blocking=True),
])
def scenarios_checks(scenarios: pd.DataFrame) -> Iterable[AssetCheckResult]:
    import great_expectations.expectations as gxe

    df = scenarios
    cols = ["scenario_id", "title", "listing_price", "buyer_target", "seller_target"]
    yield check_result("prices_positive", "scenarios", validate(df, [
        gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True, max_value=1e9)
        for c in ("listing_price", "buyer_target", "seller_target", "seller_reservation")
    ] + [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("listing_price", "buyer_target", "seller_target")],
        "scenario_prices", cols), rows=len(df))
    yield check_result("targets_ordered", "scenarios", validate(df, [
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="seller_target", column_B="buyer_target"),
    ], "scenario_targets", cols))
    yield check_result("ids_unique", "scenarios", validate(df, [
        gxe.ExpectColumnValuesToBeUnique(column="scenario_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="scenario_id"),
    ], "scenario_ids", cols))
    yield check_result("text_present", "scenarios", validate(df, [
        gxe.ExpectColumnValuesToNotBeNull(column="title"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="title", min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="category"),
    ], "scenario_text", cols))
