"""The data-quality contract of a transcript partition: Great Expectations on the rows, and the quality measures of
:mod:`agreemate_lib.negotiation.quality` against the thresholds named there."""

from __future__ import annotations

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from agreemate_lib.core.vocabulary import VOCABULARY
from agreemate_lib.negotiation.quality import EXAMPLE_COLUMNS, THRESHOLDS, transcript_findings

from ...lib.gx import ExpectationOutcome, validate
from .partitions import pair_partitions

TRANSCRIPT_CHECK_NAME = "transcripts_valid"
BEHAVIOUR_CHECK_NAME = "transcripts_behaviour"

TRANSCRIPT_CHECKS = [
    AssetCheckSpec(TRANSCRIPT_CHECK_NAME, asset="negotiation_transcripts", blocking=True,
                   partitions_def=pair_partitions,
                   description="Blocking: GX row contract (acts in the vocabulary, positive prices, speakers, turn "
                               "limit, priced deals) and the quality thresholds of agreemate_lib.negotiation.quality "
                               "(error, parse-failure and unknown-act rates, prices read from the words outside the "
                               "plausible band; accepted prices the other side offered)"),
    AssetCheckSpec(BEHAVIOUR_CHECK_NAME, asset="negotiation_transcripts", partitions_def=pair_partitions,
                   description="Warn: what the model chose, scored as it is: prices it stated outside the "
                               "plausible band, deals a side should not make (a buyer paying above the listing, a "
                               "seller below its bottom line)"),
]


def row_contract(df: pd.DataFrame, max_turns: int) -> list[ExpectationOutcome]:
    """The GX expectations on the rows; failed ones only."""
    import great_expectations.expectations as gxe

    if df.empty:
        return [ExpectationOutcome("table_not_empty", False, 1)]
    out = validate(df, [
        gxe.ExpectColumnValuesToBeInSet(column="action", value_set=list(VOCABULARY)),
        gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, strict_min=True),
        gxe.ExpectColumnValuesToNotBeNull(column="speaker"),
    ], "transcript_turns", EXAMPLE_COLUMNS)
    negs = df.groupby("negotiation_id").agg(
        n_turns=("turn_index", "count"), outcome=("outcome", "first"), accepted_price=("accepted_price", "first"),
    ).reset_index()
    out += validate(negs, [gxe.ExpectColumnValuesToBeBetween(column="n_turns", min_value=1, max_value=max_turns)],
                    "transcript_lengths", list(negs.columns))
    accepted = negs[negs["outcome"] == "accepted"]
    if len(accepted):
        out += validate(accepted, [gxe.ExpectColumnValuesToNotBeNull(column="accepted_price")],
                        "transcript_deals", list(negs.columns))
    return [o for o in out if not o.success]


def transcript_outcomes(df: pd.DataFrame, max_turns: int) -> tuple[list, list]:
    """(blocking failures, behaviour warnings) as named outcomes, for tables of any source (the published runs)."""
    errors: list = list(row_contract(df, max_turns))
    warnings: list = []
    for f in transcript_findings(df) if len(df) else []:
        if f.failed:
            (errors if f.blocking else warnings).append(
                ExpectationOutcome(f"{f.name} {f.value:.4g} > {f.limit:g}", False, 0, f.examples))
    return errors, warnings


def validate_transcripts(df: pd.DataFrame, max_turns: int) -> list[AssetCheckResult]:
    """The two check results of one transcript partition, with the measures, the limits and example rows."""
    contract = row_contract(df, max_turns)
    findings = transcript_findings(df)
    blocking = [f for f in findings if f.blocking]
    behaviour = [f for f in findings if not f.blocking]
    failed = [f for f in blocking if f.failed]
    measures = {f.name: round(f.value, 4) for f in findings}
    return [
        AssetCheckResult(
            check_name=TRANSCRIPT_CHECK_NAME, asset_key="negotiation_transcripts",
            passed=not contract and not failed, severity=AssetCheckSeverity.ERROR,
            metadata={
                "turns": len(df),
                "negotiations": int(df["negotiation_id"].nunique()) if len(df) else 0,
                "measures": MetadataValue.json(measures),
                "thresholds": MetadataValue.json(THRESHOLDS.as_dict()),
                "failed": MetadataValue.json([f"{f.name}: {f.value:.4g} > {f.limit:g}" for f in failed]
                                             + [f"{o.name}: {o.unexpected_count} rows" for o in contract]),
                "examples": MetadataValue.json({f.name: f.examples for f in failed if f.examples}
                                               | {o.name: o.examples for o in contract if o.examples}),
            }),
        AssetCheckResult(
            check_name=BEHAVIOUR_CHECK_NAME, asset_key="negotiation_transcripts",
            passed=not any(f.failed for f in behaviour), severity=AssetCheckSeverity.WARN,
            metadata={"measures": MetadataValue.json({f.name: f.value for f in behaviour}),
                      "examples": MetadataValue.json({f.name: f.examples for f in behaviour if f.failed})}),
    ]
