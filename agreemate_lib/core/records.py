"""Turns and negotiations: the records every run writes, and their parquet/JSON forms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class NegotiationOutcome:
    """What the metrics need from one negotiation."""

    listing_price: float
    buyer_target: float
    seller_target: float
    agreed: bool
    accepted_price: float | None
    actions: Sequence[str]
    prices: Sequence[float | None]  # one per turn; None where the turn named no price
    speakers: Sequence[str] | None = None  # "buyer"/"seller" per turn; needed by the corrected concession rate
    utterances: Sequence[str] | None = None  # per turn (competence metrics); None where not recorded
    seller_bottom_line: float | None = None  # the seller's reservation price, where known


@dataclass
class Turn:
    """One turn: who spoke, the dialogue act, what was said, the price named (if any), and how it was produced."""

    index: int
    speaker: str  # "buyer" | "seller"
    action: str
    utterance: str
    price: float | None = None
    #: The price was read from the words by the parser (the reply's price field was empty), not stated in a field.
    price_from_words: bool = False
    reasoning: str | None = None
    raw_output: str = ""
    parse_ok: bool = True
    action_known: bool = True
    error: str | None = None
    #: The backend produced no reply for this turn (it raised, timed out or refused); the negotiation ended here.
    backend_error: bool = False
    retries: int = 0
    structured: bool = False  # produced by constrained decoding (no free-text fallback needed)
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass
class Negotiation:
    negotiation_id: str
    scenario: dict[str, Any]
    buyer_id: str
    seller_id: str
    seed: int
    replicate: int = 0
    turns: list[Turn] = field(default_factory=list)
    #: accepted | rejected | quit | no_deal | error (a backend failure ended it: not a result, kept out of metrics)
    outcome: str = "no_deal"
    accepted_price: float | None = None
    ended_by: str | None = None  # speaker of the closing turn
    anomalies: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    buyer_cot: bool = False
    seller_cot: bool = False
    #: What failed, for an ``error`` outcome.
    error: str | None = None

    @property
    def agreed(self) -> bool:
        return self.outcome == "accepted" and self.accepted_price is not None

    def to_outcome(self) -> NegotiationOutcome:
        return NegotiationOutcome(
            listing_price=float(self.scenario["listing_price"]),
            buyer_target=float(self.scenario["buyer_target"]),
            seller_target=float(self.scenario["seller_target"]),
            agreed=self.agreed,
            accepted_price=self.accepted_price,
            actions=[t.action for t in self.turns],
            prices=[t.price for t in self.turns],
            speakers=[t.speaker for t in self.turns],
            utterances=[t.utterance for t in self.turns],
            seller_bottom_line=(float(self.scenario["seller_reservation"])
                                if self.scenario.get("seller_reservation") is not None else None),
        )

    def summary_row(self) -> dict[str, Any]:
        sc = self.scenario
        return {
            "negotiation_id": self.negotiation_id,
            "buyer_id": self.buyer_id,
            "seller_id": self.seller_id,
            "scenario_id": sc["scenario_id"],
            "title": sc.get("title", ""),
            "category": sc.get("category", ""),
            "listing_price": float(sc["listing_price"]),
            "buyer_target": float(sc["buyer_target"]),
            "seller_target": float(sc["seller_target"]),
            "seed": self.seed,
            "replicate": self.replicate,
            "outcome": self.outcome,
            "accepted_price": self.accepted_price,
            "ended_by": self.ended_by,
            "n_turns": len(self.turns),
            "parse_failures": sum(1 for t in self.turns if not t.parse_ok),
            "unknown_actions": sum(1 for t in self.turns if not t.action_known),
            "fallback_turns": sum(1 for t in self.turns if not t.structured),
            "anomalies": "; ".join(self.anomalies),
            "tokens_in": sum(t.tokens_in for t in self.turns),
            "tokens_out": sum(t.tokens_out for t in self.turns),
            "wall_s": self.wall_s,
            "buyer_cot": self.buyer_cot,
            "seller_cot": self.seller_cot,
            "negotiation_error": self.error,
        }

    def turn_rows(self) -> list[dict[str, Any]]:
        head = self.summary_row()
        keep = ("negotiation_id", "buyer_id", "seller_id", "scenario_id", "title", "category", "listing_price",
                "buyer_target", "seller_target", "seed", "replicate", "outcome", "accepted_price", "ended_by",
                "anomalies", "buyer_cot", "seller_cot", "negotiation_error")
        base = {k: head[k] for k in keep}
        base["description"] = self.scenario.get("description", "")
        base["seller_reservation"] = self.scenario.get("seller_reservation")
        base["split"] = self.scenario.get("split")
        return [base | {f"turn_{k}" if k == "index" else k: v for k, v in asdict(t).items()} for t in self.turns]


TURN_COLUMNS = (
    "negotiation_id", "buyer_id", "seller_id", "scenario_id", "turn_index", "speaker", "action", "utterance", "price",
    "price_from_words", "reasoning", "raw_output", "parse_ok", "action_known", "error", "retries", "structured",
    "tokens_in", "tokens_out", "outcome", "accepted_price",
)


#: The columns :func:`frame_to_negotiations` cannot do without.
REQUIRED_TURN_COLUMNS = ("negotiation_id", "buyer_id", "seller_id", "scenario_id", "listing_price", "buyer_target",
                         "seller_target", "seed", "turn_index", "speaker", "action", "utterance", "price", "parse_ok",
                         "action_known", "outcome", "accepted_price")


def negotiations_to_frame(negotiations: Sequence[Negotiation]):
    """One row per turn (negotiations with no turn still get one row-less entry in the summary table)."""
    import pandas as pd

    rows = [r for n in negotiations for r in n.turn_rows()]
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=list(TURN_COLUMNS))
    return df


def summaries_to_frame(negotiations: Sequence[Negotiation]):
    import pandas as pd

    return pd.DataFrame([n.summary_row() for n in negotiations])


def frame_to_negotiations(df) -> list[Negotiation]:
    """Rebuild negotiations from a turn table (as written by :func:`negotiations_to_frame`)."""
    import pandas as pd

    out: list[Negotiation] = []
    missing = [c for c in REQUIRED_TURN_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"not a transcript table (one row per turn, as `agreemate negotiate` or the "
                         f"negotiation_transcripts asset writes): missing columns {', '.join(missing)}")
    if df.empty:
        return out
    for nid, g in df.sort_values(["negotiation_id", "turn_index"]).groupby("negotiation_id", sort=False):
        first = g.iloc[0]

        def val(x):
            return None if x is None or (isinstance(x, float) and pd.isna(x)) else x

        scenario = {
            "scenario_id": first["scenario_id"],
            "title": first.get("title", ""),
            "description": first.get("description", ""),
            "category": first.get("category", ""),
            "listing_price": float(first["listing_price"]),
            "buyer_target": float(first["buyer_target"]),
            "seller_target": float(first["seller_target"]),
            "seller_reservation": val(first.get("seller_reservation")),
            "split": val(first.get("split")),
        }
        turns = [
            Turn(
                index=int(r["turn_index"]),
                speaker=r["speaker"],
                action=r["action"],
                utterance=r["utterance"] or "",
                price=None if pd.isna(r["price"]) else float(r["price"]),
                price_from_words=bool(r.get("price_from_words", False)),
                reasoning=val(r.get("reasoning")),
                raw_output=r.get("raw_output") or "",
                parse_ok=bool(r["parse_ok"]),
                action_known=bool(r["action_known"]),
                error=val(r.get("error")),
                backend_error=bool(r.get("backend_error", False)),
                retries=int(r.get("retries", 0)),
                structured=bool(r.get("structured", False)),
                tokens_in=int(r.get("tokens_in", 0)),
                tokens_out=int(r.get("tokens_out", 0)),
            )
            for _, r in g.iterrows()
            if not pd.isna(r["turn_index"])
        ]
        anomalies = val(first.get("anomalies")) or ""
        out.append(
            Negotiation(
                negotiation_id=str(nid),
                scenario=scenario,
                buyer_id=str(first["buyer_id"]),
                seller_id=str(first["seller_id"]),
                seed=int(first["seed"]),
                replicate=int(first.get("replicate", 0)),
                turns=turns,
                outcome=str(first["outcome"]),
                accepted_price=None if pd.isna(first["accepted_price"]) else float(first["accepted_price"]),
                ended_by=val(first.get("ended_by")),
                anomalies=[a for a in anomalies.split("; ") if a],
                buyer_cot=bool(first.get("buyer_cot", False)),
                seller_cot=bool(first.get("seller_cot", False)),
                error=val(first.get("negotiation_error")),
            )
        )
    return out
