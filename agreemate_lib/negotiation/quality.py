"""What makes a transcript partition usable, measured on the transcript table the pipeline writes. The thresholds
live here, in one place; the Dagster checks, the CLI and the docs read them from here.

Blocking (a partition that fails is not scored):
- ``error_rate``: negotiations that ended in an error (no reply from a backend), over negotiations;
- ``parse_failure_rate``: turns whose reply was unusable after the re-asks, over turns;
- ``unknown_action_rate``: turns with an act outside the vocabulary, over turns;
- ``implausible_price_rate``: priced turns whose price the parser read from the words (the reply's price field was
  empty) and which lies outside ``price_band`` times the listing price, over priced turns: a year or a model number
  taken for a price;
- ``accepted_not_offered``: deals whose price the other side never proposed (the runner should make this
  impossible: it guards the invariant).
Behaviour (warn): what the model chose, scored as it is: a price it stated in its price field outside
``price_band`` (``implausible_stated_price_rate``: "$1" for a $290 bed is a bad offer, not a fault), and deals a side
should not have made: the buyer paying more than the listing price, the seller selling below its bottom line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd


@dataclass(frozen=True)
class QualityThresholds:
    max_error_rate: float = 0.0
    max_parse_failure_rate: float = 0.2
    max_unknown_action_rate: float = 0.05
    #: A plausible price lies between these multiples of the listing price.
    price_band: tuple[float, float] = (0.05, 5.0)
    max_implausible_price_rate: float = 0.05

    def as_dict(self) -> dict:
        return asdict(self)


THRESHOLDS = QualityThresholds()

EXAMPLE_COLUMNS = ["negotiation_id", "turn_index", "speaker", "action", "price", "price_from_words", "listing_price",
                   "outcome", "accepted_price", "utterance", "error"]


@dataclass
class Finding:
    name: str
    value: float
    limit: float | None
    blocking: bool
    examples: list[dict]

    @property
    def failed(self) -> bool:
        return self.value > (self.limit or 0.0)


def _negotiations(turns: pd.DataFrame) -> pd.DataFrame:
    return turns.groupby("negotiation_id", sort=True).first().reset_index()


def _examples(rows: pd.DataFrame, n: int = 5) -> list[dict]:
    cols = [c for c in EXAMPLE_COLUMNS if c in rows.columns]
    head = rows[cols].head(n).astype(object)
    return head.where(head.notna(), None).to_dict("records")


def accepted_not_offered(turns: pd.DataFrame) -> pd.DataFrame:
    """Deals whose accepted price was never proposed by the side that did not accept."""
    bad = []
    for _, g in turns[turns["outcome"] == "accepted"].groupby("negotiation_id"):
        g = g.sort_values("turn_index")
        closer = g.iloc[-1]["speaker"]
        offered = set(g.loc[(g["speaker"] != closer) & g["price"].notna(), "price"].round(2))
        if round(float(g.iloc[0]["accepted_price"]), 2) not in offered:
            bad.append(g.iloc[-1])
    return pd.DataFrame(bad)


def transcript_findings(turns: pd.DataFrame, t: QualityThresholds = THRESHOLDS) -> list[Finding]:
    """Every measure above, with its limit and a few example rows, for one transcript table."""
    if turns.empty:
        return [Finding("turns", 0, None, True, [])]
    negs = _negotiations(turns)
    errors = negs[negs["outcome"] == "error"]
    scored = turns[turns["outcome"] != "error"]
    failed = scored[~scored["parse_ok"].astype(bool)]
    unknown = scored[~scored["action_known"].astype(bool)]
    priced = scored[scored["price"].notna()]
    ratio = priced["price"] / priced["listing_price"]
    implausible = priced[(ratio < t.price_band[0]) | (ratio > t.price_band[1])]
    from_words = (implausible["price_from_words"].astype(bool) if "price_from_words" in implausible
                  else pd.Series(True, index=implausible.index))  # tables from before the column: as before
    misread, stated = implausible[from_words], implausible[~from_words]
    deals = negs[negs["outcome"] == "accepted"]
    overpaid = deals[deals["accepted_price"] > deals["listing_price"] + 1e-9]
    if "seller_reservation" in deals:
        underpriced = deals[deals["seller_reservation"].notna()
                            & (deals["accepted_price"] < deals["seller_reservation"] - 1e-9)]
    else:
        underpriced = deals.iloc[0:0]
    unoffered = accepted_not_offered(scored)
    n_turns = max(1, len(scored))
    return [
        Finding("error_rate", len(errors) / len(negs), t.max_error_rate, True,
                _examples(turns[turns["negotiation_id"].isin(errors["negotiation_id"]) & turns["backend_error"]]
                          if "backend_error" in turns else errors)),
        Finding("parse_failure_rate", len(failed) / n_turns, t.max_parse_failure_rate, True, _examples(failed)),
        Finding("unknown_action_rate", len(unknown) / n_turns, t.max_unknown_action_rate, True, _examples(unknown)),
        Finding("implausible_price_rate", len(misread) / max(1, len(priced)), t.max_implausible_price_rate, True,
                _examples(misread)),
        Finding("accepted_not_offered", float(len(unoffered)), 0.0, True, _examples(unoffered)),
        Finding("implausible_stated_price_rate", len(stated) / max(1, len(priced)), t.max_implausible_price_rate,
                False, _examples(stated)),
        Finding("buyer_paid_above_listing", float(len(overpaid)), 0.0, False, _examples(overpaid)),
        Finding("seller_sold_below_bottom_line", float(len(underpriced)), 0.0, False, _examples(underpriced)),
    ]
