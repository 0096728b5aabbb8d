"""Great Expectations 1.x validations of our tables, turned into Dagster check results.

dagster-ge does not support GX 1.x; this module runs GX itself (an ephemeral context, pandas dataframes) and
returns, per expectation, whether it passed, how many rows failed and a few of those rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        _CTX = gx.get_context(mode="ephemeral")
        _CTX.variables.progress_bars = ProgressBarsConfig(globally=False)
    return _CTX


@dataclass
class ExpectationOutcome:
    name: str
    success: bool
    unexpected_count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)


def validate(df: pd.DataFrame, expectations: list, name: str, example_columns: list[str] | None = None,
             max_examples: int = 5) -> list[ExpectationOutcome]:
    """Run GX expectations on a dataframe; failing rows are looked up by index for examples."""
    import great_expectations as gx

    ctx = _context()
    suite = gx.ExpectationSuite(name=f"{name}-suite")
    for e in expectations:
        suite.add_expectation(e)
    ds_name = f"ds-{name}"
    try:
        source = ctx.data_sources.get(ds_name)
    except (KeyError, ValueError, Exception):  # noqa: BLE001 - GX raises its own lookup errors
        source = ctx.data_sources.add_pandas(ds_name)
    try:
        asset = source.get_asset(name)
    except (LookupError, Exception):  # noqa: BLE001
        asset = source.add_dataframe_asset(name=name)
    try:
        batch_def = asset.get_batch_definition("whole")
    except (KeyError, Exception):  # noqa: BLE001
        batch_def = asset.add_batch_definition_whole_dataframe("whole")
    frame = df.reset_index(drop=True)
    result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="COMPLETE")
    out = []
    cols = [c for c in (example_columns or list(frame.columns)) if c in frame.columns]
    for r in result.results:
        cfg = r.expectation_config
        label = cfg.type + (f"[{cfg.kwargs.get('column')}]" if cfg.kwargs.get("column") else "")
        res = r.result or {}
        idx = res.get("unexpected_index_list") or []
        rows = [i for i in idx[:max_examples] if i in frame.index]
        examples = frame.loc[rows, cols].to_dict("records") if idx else []
        count = int(res.get("unexpected_count") or (0 if r.success else 1))
        out.append(ExpectationOutcome(label, bool(r.success), count, examples))
    return out


def summarize(outcomes: list[ExpectationOutcome]) -> dict[str, Any]:
    failed = [o for o in outcomes if not o.success]
    return {
        "expectations": len(outcomes),
        "failed": [f"{o.name}: {o.unexpected_count} rows" for o in failed],
        "examples": {o.name: o.examples for o in failed if o.examples},
    }


def check_result(check: str, asset: str, outcomes: list[ExpectationOutcome], severity=None, **extra):
    """A Dagster check result from GX outcomes: passed when every expectation passed; failed expectations with their
    row counts and example rows in the metadata."""
    from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

    failed = [o for o in outcomes if not o.success]
    return AssetCheckResult(
        check_name=check, asset_key=asset, passed=not failed, severity=severity or AssetCheckSeverity.ERROR,
        metadata={"expectations": len(outcomes),
                  "failed": MetadataValue.json([f"{o.name}: {o.unexpected_count} rows" for o in failed]),
                  "examples": MetadataValue.json({o.name: o.examples for o in failed if o.examples}), **extra},
    )
