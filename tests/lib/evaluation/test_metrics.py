"""Metric formulas, their edge cases, and the paper mode against the published CSVs."""

import json
import math

import pytest

from agreemate_lib.evaluation.metrics import NegotiationOutcome, aggregate, bootstrap_mean, negotiation_metrics
from agreemate_lib.evaluation.paper import detect_paper_variant, read_published_csv
from tests.conftest import PUBLISHED


def outcome(p=None, L=200.0, B=120.0, S=200.0, actions=("offer", "counter-price", "accept"),
            prices=(150.0, 180.0, None), speakers=("buyer", "seller", "buyer")):
    return NegotiationOutcome(L, B, S, p is not None, p, list(actions), list(prices), list(speakers))


def test_deal_at_midpoint_is_fair():
    m = negotiation_metrics(outcome(p=160.0))
    assert m["agreement_rate"] == 1.0
    assert m["bias"] == pytest.approx(0.0)
    assert m["fairness"] == pytest.approx(1.0)
    assert m["aggressiveness"] == pytest.approx(0.2)
    assert m["dialogue_length"] == 3
    assert m["relative_efficiency"] == pytest.approx(1 / 3)


def test_bias_sign_favours_buyer_when_positive():
    assert negotiation_metrics(outcome(p=120.0))["bias"] == pytest.approx(1.0)  # at the buyer's target
    assert negotiation_metrics(outcome(p=200.0))["bias"] == pytest.approx(-1.0)  # at the seller's target
    assert negotiation_metrics(outcome(p=175.0))["bias"] == pytest.approx(-0.375)  # published row, bike


def test_no_deal_leaves_price_metrics_undefined():
    m = negotiation_metrics(outcome(p=None, actions=("offer", "reject"), prices=(150.0, None),
                                    speakers=("buyer", "seller")))
    assert m["agreement_rate"] == 0.0
    for k in ("bias", "fairness", "aggressiveness", "bias_per_turn", "relative_efficiency"):
        assert math.isnan(m[k]), k
    assert m["dialogue_length"] == 2


def test_equal_targets_do_not_divide_by_zero():
    m = negotiation_metrics(outcome(p=100.0, L=100.0, B=100.0, S=100.0))
    assert math.isnan(m["bias"]) and math.isnan(m["fairness"]) and math.isnan(m["concession_rate"])
    assert m["aggressiveness"] == 0.0


def test_missing_prices():
    m = negotiation_metrics(outcome(p=None, actions=("intro", "inform"), prices=(None, None),
                                    speakers=("buyer", "seller")))
    assert math.isnan(m["concession_rate"])
    mp = negotiation_metrics(outcome(p=None, actions=("intro", "inform"), prices=(-1, -1),
                                     speakers=("buyer", "seller")), "paper")
    assert math.isnan(mp["concession_rate"])


def test_corrected_concession_is_normalised_by_zone():
    # buyer 100 -> 120 (+20), seller 200 -> 180 (+20): mean move 20 over S-B = 80
    o = outcome(p=None, actions=("offer", "offer", "offer", "offer"), prices=(100.0, 200.0, 120.0, 180.0),
                speakers=("buyer", "seller", "buyer", "seller"))
    assert negotiation_metrics(o)["concession_rate"] == pytest.approx(0.25)
    # the same negotiation at 100x the price gives the same corrected rate, 100x the paper's
    big = NegotiationOutcome(20000, 12000, 20000, False, None, o.actions, [x * 100 for x in o.prices], o.speakers)
    assert negotiation_metrics(big)["concession_rate"] == pytest.approx(0.25)
    assert negotiation_metrics(big, "paper")["concession_rate"] == pytest.approx(
        100 * negotiation_metrics(o, "paper")["concession_rate"])


def test_paper_concession_formula():
    # published bike row: sum |diff| over priced turns / number of priced turns
    prices = [-1, -1, 160, 185, 170, 180, 165, 175, 178, 175, 177, 175, 175, 175]
    o = NegotiationOutcome(200, 120, 200, True, 175.0, ["offer"] * 14, prices, None)
    assert negotiation_metrics(o, "paper")["concession_rate"] == pytest.approx(7.083333333333333)


def test_probing_ratio():
    o = outcome(p=None, actions=("inquire", "inform", "inquire", "inform"), prices=(None,) * 4,
                speakers=("buyer", "seller") * 2)
    assert negotiation_metrics(o)["probing_ratio"] == 0.5


def test_bootstrap_ci_contains_mean_and_is_seeded():
    vals = [0.1, 0.5, 0.9, 0.3, float("nan")]
    a, b = bootstrap_mean(vals, seed=1), bootstrap_mean(vals, seed=1)
    assert a == b and a.n == 4
    assert a.low <= a.mean <= a.high
    assert math.isnan(bootstrap_mean([]).mean)


def test_aggregate_keys():
    agg = aggregate([negotiation_metrics(outcome(p=160.0)), negotiation_metrics(outcome(p=None))])
    assert agg["n"] == 2 and agg["agreement_rate"] == 0.5
    assert "fairness_ci_low" in agg and agg["fairness_n"] == 1


def test_bad_mode():
    with pytest.raises(ValueError, match="formula mode"):
        negotiation_metrics(outcome(p=1.0), "paperish")


def _close(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6 * max(1.0, abs(a))


@pytest.mark.parametrize("name", [
    "baseline-3B-buyer+baseline-3B-seller.csv",
    "baseline-COT-8B-buyer+baseline-70B-seller.csv",
    "baseline-3B-buyer-aggressive+baseline-3B-seller-fair.csv",  # the signed (personality) code version
    "finetune-3B-buyer+finetune-3B-seller.csv",  # the older 19-column layout
])
def test_paper_mode_reproduces_published_rows(name):
    rows = read_published_csv(PUBLISHED / name)
    mode = detect_paper_variant(rows)
    checked = 0
    for r in rows:
        m = negotiation_metrics(r.outcome_for(mode), mode)
        for k, v in r.stored.items():
            assert _close(v, m[k]), (name, r.row, k, v, m[k])
            checked += 1
    assert checked >= 150


def test_cli_metrics_paired_against_a_pair(capsys):
    """``--paired-against``: every other pair minus the named one, scenario by scenario, on the paper's 30 listings;
    a pair that was not read is a clear error."""
    from agreemate_lib.cli.main import main

    files = [str(PUBLISHED / "baseline-3B-buyer+baseline-3B-seller.csv"),
             str(PUBLISHED / "finetune-3B-buyer+finetune-3B-seller.csv")]
    assert main(["metrics", *files, "--json"]) == 0
    pairs = {r["group"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])}
    base = next(p for p in pairs if p.startswith("baseline"))
    assert main(["metrics", *files, "--json", "--paired-against", base]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {r["group"] for r in out["pairs"]} == set(pairs)
    (ft,) = set(pairs) - {base}
    agree = next(r for r in out["paired"] if r["metric"] == "agreement_rate")
    assert agree["pair_a"] == ft and agree["pair_b"] == base and agree["n_matched"] == 30
    # every scenario matched: the mean of the differences is the difference of the means
    assert agree["mean_difference"] == pytest.approx(pairs[ft]["agreement_rate"] - pairs[base]["agreement_rate"])
    assert agree["ci_low"] <= agree["mean_difference"] <= agree["ci_high"] and 0 < agree["p_value"] <= 1
    assert main(["metrics", *files, "--paired-against", "no-such+pair"]) == 2
    assert "none of the pairs read" in capsys.readouterr().err


def test_cli_metrics_paper_matches_file_means(capsys):
    from agreemate_lib.cli.main import main

    path = PUBLISHED / "baseline-3B-buyer+baseline-3B-seller.csv"
    assert main(["metrics", str(path), "--formula", "paper", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out[0]["n"] == 30
    rows = read_published_csv(path)
    fair = [r.stored["fairness"] for r in rows if not math.isnan(r.stored["fairness"])]
    assert out[0]["fairness"] == pytest.approx(sum(fair) / len(fair))
    for key in ("agreement_rate", "dialogue_length", "aggressiveness", "bias", "bias_per_turn", "concession_rate",
                "relative_efficiency", "probing_ratio"):
        assert key in out[0]


def test_paper_modes_reproduce_every_stored_cell_of_every_file():
    """All 90 published files (the *_updated ones included, by their own code version) recomputed cell by cell."""
    files = sorted(PUBLISHED.glob("*.csv"))
    assert len(files) == 90
    checked, wrong = 0, []
    for f in files:
        rows = read_published_csv(f)
        mode = detect_paper_variant(rows)
        if f.stem.endswith("_updated"):
            assert mode in ("paper-updated", "paper"), (f.name, mode)
        for r in rows:
            m = negotiation_metrics(r.outcome_for(mode), mode)
            for k, v in r.stored.items():
                checked += 1
                if not _close(v, m[k]):
                    wrong.append((f.name, r.row, k, v, m[k]))
    assert checked == 21330 and wrong == [], wrong[:5]


def test_competence_metrics_on_a_bad_haggler():
    from agreemate_lib.core.records import NegotiationOutcome
    from agreemate_lib.evaluation.metrics import act_distribution, js_divergence, negotiation_metrics

    # buyer opens at 60, seller 95, buyer reneges to 55, seller raises to 98 (reneges), buyer says "$70" but its price
    # field says 90, seller accepts at 90: below nothing, above nothing; then a second outcome below the bottom line
    o = NegotiationOutcome(listing_price=100.0, buyer_target=60.0, seller_target=100.0, agreed=True,
                           accepted_price=90.0, actions=["init-price", "counter-price", "counter-price",
                                                         "counter-price", "offer", "accept"],
                           prices=[60.0, 95.0, 55.0, 98.0, 90.0, None],
                           speakers=["buyer", "seller", "buyer", "seller", "buyer", "seller"],
                           utterances=["$60?", "95", "55 then", "I said $98", "I can do $70", "Deal."],
                           seller_bottom_line=70.0)
    m = negotiation_metrics(o)
    assert m["reneging_rate"] == pytest.approx(2 / 3)  # buyer 60->55 and seller 95->98 away; buyer 55->90 toward
    assert m["utterance_price_mismatch"] == pytest.approx(1 / 5)  # "$70" with price 90
    assert m["deal_outside_limits"] == 0.0 and m["accepted_unoffered"] == 0.0
    assert m["opening_offer_share"] == pytest.approx(0.6)
    low = NegotiationOutcome(**{**o.__dict__, "accepted_price": 65.0, "prices": [60.0, 95.0, 62.0, 90.0, 65.0, None]})
    m2 = negotiation_metrics(low)
    assert m2["deal_outside_limits"] == 1.0 and m2["reneging_rate"] == 0.0
    unoffered = NegotiationOutcome(**{**o.__dict__, "accepted_price": 80.0})
    assert negotiation_metrics(unoffered)["accepted_unoffered"] == 1.0
    # the other side has no price on record (the published runs' unparsed -1): unknown, not a violation
    nothing_named = NegotiationOutcome(**{**o.__dict__, "prices": [None, 95.0, None, 98.0, None, None]})
    assert math.isnan(negotiation_metrics(nothing_named)["accepted_unoffered"])
    # an accept's words name the price it accepts (the other side's last one): consistent; another price is not
    said_deal = NegotiationOutcome(**{**o.__dict__, "utterances": [*o.utterances[:-1], "Deal, $90 it is."]})
    assert negotiation_metrics(said_deal)["utterance_price_mismatch"] == pytest.approx(1 / 6)
    other_deal = NegotiationOutcome(**{**o.__dict__, "utterances": [*o.utterances[:-1], "Deal at $98."]})
    assert negotiation_metrics(other_deal)["utterance_price_mismatch"] == pytest.approx(2 / 6)
    no_words = NegotiationOutcome(**{**o.__dict__, "utterances": None})
    assert math.isnan(negotiation_metrics(no_words)["utterance_price_mismatch"])
    p = act_distribution([["offer", "accept"], ["inquire", "unknown"]])
    assert p == {"accept": 1 / 3, "inquire": 1 / 3, "offer": 1 / 3}
    assert js_divergence(p, p) == 0.0 and js_divergence({"a": 1.0}, {"b": 1.0}) == pytest.approx(1.0)
