"""Reading the AgreeMate paper's published result CSVs (and any file in that layout)."""

from __future__ import annotations

import ast
import csv
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agreemate_lib.core.records import NegotiationOutcome
from agreemate_lib.core.vocabulary import normalize_action
from agreemate_lib.evaluation.metrics import negotiation_metrics

csv.field_size_limit(2**31 - 1)

#: Stored metric columns of the published CSVs and our metric names.
STORED_COLUMNS = {
    "fairness": "fairness",
    "bias": "bias",
    "aggressiveness": "aggressiveness",
    "probing_ratio": "probing_ratio",
    "concession_rate": "concession_rate",
    "bias_cond_dialogue_length": "bias_per_turn",
    "rel_efficiency": "relative_efficiency",
    "dialogue_length": "dialogue_length",
}
REQUIRED_COLUMNS = ("listing_price", "buyer_target", "seller_target", "outcome", "prices", "actions")


class PublishedRunError(ValueError):
    pass


@dataclass
class PublishedRow:
    file: str
    row: int
    scenario_id: str
    title: str
    category: str
    outcome: NegotiationOutcome
    raw_actions: list[str]
    stored: dict[str, float]  # stored metric values (NaN where blank)
    transcript: str
    accepted_without_price: bool = False
    legacy_layout: bool = False  # the older 19-column layout, without concession_rate / rel_efficiency

    def outcome_for(self, mode: str) -> NegotiationOutcome:
        """The outcome as a formula mode sees it.

        Paper modes reproduce the paper's code: only the exact string ``inquire`` counts as probing (raw actions),
        and in the older 19-column layout (1B and ``finetune-3B`` files) an "Accepted" row with no price was scored
        at the listing price (the later code left it blank). The corrected mode treats that row as
        no deal (and :attr:`accepted_without_price` flags it).
        """
        if mode == "corrected":
            return self.outcome
        o = replace(self.outcome, actions=list(self.raw_actions))
        if self.accepted_without_price and self.legacy_layout:
            o = replace(o, agreed=True, accepted_price=o.listing_price)
        return o

    @property
    def n_unknown_actions(self) -> int:
        return sum(1 for a in self.raw_actions if not normalize_action(a)[1])


def _float_or_nan(s: Any) -> float:
    if s is None:
        return math.nan
    s = str(s).strip()
    if s in ("", "N/A", "nan", "None"):
        return math.nan
    return float(s)


def _literal_list(s: str, path: Path, row: int, column: str) -> list:
    try:
        val = ast.literal_eval(s) if s.strip() else []
    except (ValueError, SyntaxError) as exc:
        raise PublishedRunError(f"{path.name} row {row}: column {column!r} is not a list literal: {exc}") from None
    if not isinstance(val, list):
        raise PublishedRunError(f"{path.name} row {row}: column {column!r} is not a list")
    return val


def read_published_csv(path: str | Path) -> list[PublishedRow]:
    """Rows of one AgreeMate-format result CSV. Speakers alternate, buyer first, as in the paper's runner."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"result CSV not found: {path}")
    out: list[PublishedRow] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PublishedRunError(f"{path.name}: missing column(s) {missing}; found {reader.fieldnames}")
        for i, r in enumerate(reader):
            actions = [str(a) for a in _literal_list(r["actions"], path, i, "actions")]
            prices = _literal_list(r["prices"], path, i, "prices")
            mapped = [normalize_action(a)[0] for a in actions]
            ap = _float_or_nan(r.get("accepted_price"))
            agreed = str(r["outcome"]).strip().lower() == "accepted" and math.isfinite(ap)
            outcome = NegotiationOutcome(
                listing_price=float(r["listing_price"]),
                buyer_target=float(r["buyer_target"]),
                seller_target=float(r["seller_target"]),
                agreed=agreed,
                accepted_price=ap if agreed else None,
                actions=mapped,
                prices=[None if p in (-1, -1.0, None) else float(p) for p in prices],
                speakers=["buyer" if k % 2 == 0 else "seller" for k in range(len(actions))],
            )
            stored = {ours: _float_or_nan(r[col]) for col, ours in STORED_COLUMNS.items() if col in r}
            out.append(
                PublishedRow(
                    file=path.name,
                    row=i,
                    scenario_id=r.get("scenario_id") or f"{path.stem}-{i}",
                    title=r.get("title", ""),
                    category=r.get("category", ""),
                    outcome=outcome,
                    raw_actions=actions,
                    stored=stored,
                    transcript=r.get("transcript", ""),
                    legacy_layout="concession_rate" not in (reader.fieldnames or []),
                    accepted_without_price=str(r["outcome"]).strip().lower() == "accepted" and not math.isfinite(ap),
                )
            )
    return out


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def detect_paper_variant(rows: list[PublishedRow]) -> str:
    """Which version of the paper's metric code produced a file: ``paper`` or ``paper-signed``.

    The published files come from three code versions (absolute vs signed price steps in the concession rate, and
    absolute vs signed fairness in relative efficiency: ``paper``, ``paper-signed``, and ``paper-updated`` for the
    ``*_updated.csv`` files); pick the one whose recomputation matches the stored columns on more cells.
    """
    scores = {}
    for mode in ("paper", "paper-signed", "paper-updated"):
        scores[mode] = sum(
            _close(negotiation_metrics(r.outcome_for(mode), mode)[k], v)  # type: ignore[arg-type]
            for r in rows
            for k, v in r.stored.items()
            if k in ("concession_rate", "relative_efficiency")
        )
    return max(scores, key=lambda m: (scores[m], m == "paper"))


def pair_from_filename(name: str, prefix: str = "published-") -> tuple[str, str]:
    """Agent ids of a published file: ``baseline-3B-buyer-aggressive+baseline-COT-8B-seller.csv`` →
    (``published-baseline-3b-aggressive``, ``published-baseline-cot-8b``)."""
    stem = re.sub(r"_updated$", "", Path(name).stem)
    b, _, s = stem.partition("+")
    s = s or b

    def agent(x: str) -> str:
        return prefix + re.sub(r"-(buyer|seller)(?=-|$)", "", x.lower())

    return agent(b), agent(s)


def published_negotiations(path: str | Path, rows: list[PublishedRow] | None = None) -> list:
    """A published file's rows as negotiations (speakers alternate, buyer first), for the transcript checks.
    ``rows``: the file's rows when the caller has read them already."""
    from agreemate_lib.core.records import Negotiation, Turn

    path = Path(path)
    buyer, seller = pair_from_filename(path.name)
    out = []
    for r in rows if rows is not None else read_published_csv(path):
        o = r.outcome
        turns = [Turn(index=k, speaker=o.speakers[k], action=o.actions[k], utterance="", price=o.prices[k],
                      raw_output=r.raw_actions[k], action_known=normalize_action(r.raw_actions[k])[1])
                 for k in range(len(o.actions))]
        neg = Negotiation(f"{buyer}+{seller}:{r.scenario_id}:r0",
                          {"scenario_id": r.scenario_id, "title": r.title, "category": r.category,
                           "listing_price": o.listing_price, "buyer_target": o.buyer_target,
                           "seller_target": o.seller_target, "description": ""},
                          buyer, seller, seed=0, turns=turns)
        if o.agreed or r.accepted_without_price:
            neg.outcome, neg.accepted_price = "accepted", o.accepted_price
        out.append(neg)
    return out


def is_cot_pair(name: str) -> bool:
    return "cot" in Path(name).stem.lower()


#: The published run whose 30 listings define the paper's scenarios (every file of the grid uses the same 30).
PAPER_SCENARIO_FILE = "baseline-3B-buyer+baseline-3B-seller.csv"


def published_dir() -> Path:
    from agreemate_lib.core import settings

    d = settings.data_dir()
    if d is None or not (d / "agreemate_published_runs").is_dir():
        raise FileNotFoundError("the paper's published runs are not there: set AGREEMATE_DATA_DIR to the data folder "
                                "that holds agreemate_published_runs/")
    return d / "agreemate_published_runs"


def paper_scenarios(path: str | Path | None = None, reservation_fraction: float = 0.7):
    """The paper's 30 evaluation listings with the published runs' own prices and targets, in the published order;
    ``scenario_id`` is the published one, so our rows pair with the paper's per scenario."""
    from agreemate_lib.core.scenarios import Scenario

    path = Path(path) if path else published_dir() / PAPER_SCENARIO_FILE
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        for i, r in enumerate(csv.DictReader(fh)):
            lp = float(r["listing_price"])
            out.append(Scenario(scenario_id=r["scenario_id"], split="paper", row=i, title=r["title"].strip(),
                                description=(r.get("description") or "").strip(),
                                category=(r.get("category") or "").strip() or "unknown", listing_price=lp,
                                buyer_target=float(r["buyer_target"]), seller_target=float(r["seller_target"]),
                                seller_reservation=round(reservation_fraction * lp, 2)))
    return out


def paper_scenarios_keys(path: str | Path | None = None) -> frozenset[str]:
    """The listing keys (``training.splits.listing_key``) of the paper's scenarios: never trained on."""
    from agreemate_lib.training.splits import listing_key

    return frozenset(listing_key(s.title) for s in paper_scenarios(path))


def paper_listing_report(source: str | None = None) -> dict:
    """How the paper's 30 listings match train_scenarios.csv (by listing key): the titles without a match, and the
    matched ones whose published buyer target is none of that listing's targets in the dataset."""
    from agreemate_lib.core.scenarios import load_scenarios
    from agreemate_lib.training.splits import listing_key

    targets: dict[str, set[float]] = {}
    for s in load_scenarios("train", source).scenarios:
        targets.setdefault(listing_key(s.title), set()).add(round(s.buyer_target, 2))
    unmatched, other_target = [], []
    for s in paper_scenarios():
        k = listing_key(s.title)
        if k not in targets:
            unmatched.append(s.title)
        elif round(s.buyer_target, 2) not in targets[k]:
            other_target.append(s.title)
    return {"listings": 30, "matched": 30 - len(unmatched), "unmatched_titles": unmatched,
            "matched_with_other_buyer_target": other_target}
