"""The data-quality contract of a transcript partition, validated with Great Expectations."""

from __future__ import annotations

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from agreemate_lib.core.vocabulary import VOCABULARY

from ...lib.gx import ExpectationOutcome, validate

TRANSCRIPT_CHECK_NAME = "transcripts_valid"
EXAMPLE_COLUMNS = ["negotiation_id", "turn_index", "speaker", "action", "price", "listing_price", "outcome",
                   "accepted_price", "utterance"]


def transcript_outcomes(df: pd.DataFrame, max_turns: int, warn_rate: float) -> tuple[list, list]:
    """(errors, warnings): lists of :class:`ExpectationOutcome` that failed."""
    import great_expectations.expectations as gxe

    if df.empty:
        return [ExpectationOutcome("table_not_empty", False, 1)], []
    turns = df.copy()
    turns["price_ratio"] = turns["price"] / turns["listing_price"]
    errors = validate(turns, [
        gxe.ExpectColumnValuesToBeInSet(column="action", value_set=list(VOCABULARY)),
        gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToNotBeNull(column="speaker"),
    ], "transcript_turns", EXAMPLE_COLUMNS)
    warnings = validate(turns, [
        gxe.ExpectColumnValuesToBeBetween(column="price_ratio", min_value=0.05, max_value=5.0),
    ], "transcript_turn_prices", EXAMPLE_COLUMNS + ["price_ratio"])
    negs = turns.groupby("negotiation_id").agg(
        n_turns=("turn_index", "count"), outcome=("outcome", "first"), accepted_price=("accepted_price", "first"),
        listing_price=("listing_price", "first"), parse_failures=("parse_ok", lambda s: int((~s).sum())),
    ).reset_index()
    errors += validate(negs, [gxe.ExpectColumnValuesToBeBetween(column="n_turns", min_value=1, max_value=max_turns)],
                       "transcript_lengths", list(negs.columns))
    accepted = negs[negs["outcome"] == "accepted"]
    if len(accepted):
        errors += validate(accepted, [gxe.ExpectColumnValuesToNotBeNull(column="accepted_price")],
                           "transcript_deals", list(negs.columns))
    rate = float((~turns["parse_ok"]).mean())
    if rate > warn_rate:
        bad = turns[~turns["parse_ok"]][EXAMPLE_COLUMNS + ["error"]].head(5).to_dict("records")
        warnings.append(ExpectationOutcome(f"parse_failure_rate {rate:.1%} > {warn_rate:.0%}", False,
                                           int((~turns["parse_ok"]).sum()), bad))
    return [o for o in errors if not o.success], [o for o in warnings if not o.success]


def validate_transcripts(df: pd.DataFrame, max_turns: int, warn_rate: float) -> AssetCheckResult:
    errors, warnings = transcript_outcomes(df, max_turns, warn_rate)
    unknown = int((df["action"] == "unknown").sum()) if len(df) else 0
    failed = errors + warnings
    meta = {
        "turns": len(df),
        "unknown_actions": unknown,
        "parse_failures": int((~df["parse_ok"]).sum()) if len(df) else 0,
        "errors": MetadataValue.json([f"{o.name}: {o.unexpected_count} rows" for o in errors]),
        "warnings": MetadataValue.json([f"{o.name}: {o.unexpected_count} rows" for o in warnings]),
        "examples": MetadataValue.json({o.name: o.examples for o in failed if o.examples}),
    }
    return AssetCheckResult(
        check_name=TRANSCRIPT_CHECK_NAME,
        asset_key="negotiation_transcripts",
        passed=not failed,
        severity=AssetCheckSeverity.ERROR if errors else AssetCheckSeverity.WARN,
        metadata=meta,
    )
