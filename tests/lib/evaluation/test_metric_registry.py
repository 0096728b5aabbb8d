"""The metric registry: lists, tables, range checks and the docs table all come from registered functions."""

import math
from pathlib import Path

import pytest

from agreemate_lib.core.records import NegotiationOutcome
from agreemate_lib.evaluation import metrics as M

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def extra_metric():
    """A metric registered by a test, removed afterwards."""
    @M.register_metric("prices_named", formula="number of turns that named a price", bounds=(0.0, None),
                       doc_range="≥ 0")
    def prices_named(x: M.MetricInputs) -> float:
        return float(sum(p is not None for p in x.prices))

    yield "prices_named"
    M.METRICS.pop("prices_named")


def outcome(agreed=True):
    return NegotiationOutcome(200.0, 150.0, 200.0, agreed, 180.0 if agreed else None, ["offer", "counter-price",
                              "accept"], [160.0, 190.0, None], ["buyer", "seller", "buyer"])


def test_docs_table_is_the_registry():
    doc = (ROOT / "docs" / "metrics.md").read_text()
    block = doc.split("<!-- metric-table:begin")[1].split("-->", 1)[1].split("<!-- metric-table:end -->")[0]
    assert block.strip() == M.metrics_doc_table(), "docs/metrics.md's table differs from the registry"


def test_a_new_metric_is_one_registered_function(extra_metric):
    import pandas as pd

    from agreemate_lib.evaluation.tables import summarize

    assert extra_metric in M.metric_names()
    row = M.negotiation_metrics(outcome())
    assert row[extra_metric] == 2.0
    agg = M.aggregate([row, M.negotiation_metrics(outcome(False))], n_boot=50)
    assert {extra_metric, f"{extra_metric}_ci_low", f"{extra_metric}_n"} <= set(agg)
    table = pd.DataFrame([row | {"pair": "a+b", "parse_failures": 0, "n_turns": 3, "anomalies": 0}])
    assert extra_metric in summarize(table, "pair", n_boot=20).columns


def test_range_check_covers_every_bounded_metric(extra_metric):
    from agreemate_assets.defs.evaluation.checks import metric_range_expectations

    checked = {e.column for e in metric_range_expectations()}
    assert extra_metric in checked
    assert checked == {m.name for m in M.METRICS.values() if m.bounds != (None, None)}
    assert "bias" not in checked  # documented as leaving [-1, 1] for deals outside the targets


@pytest.mark.parametrize("mode", M.FORMULA_MODES)
def test_bounds_hold_on_every_published_negotiation(mode):
    """The bounds a metric registers are true of real negotiations (the paper's 90 runs), in every formula mode."""
    from agreemate_lib.evaluation.paper import read_published_csv
    from tests.conftest import PUBLISHED

    files = sorted(PUBLISHED.glob("*.csv"))
    assert len(files) >= 90
    for f in files[::9]:
        for r in read_published_csv(f):
            row = M.negotiation_metrics(r.outcome_for(mode), mode)
            for m in M.METRICS.values():
                v = row[m.name]
                lo, hi = m.bounds
                if math.isnan(v):
                    continue
                assert (lo is None or v >= lo) and (hi is None or v <= hi), (f.name, r.row, m.name, v)
