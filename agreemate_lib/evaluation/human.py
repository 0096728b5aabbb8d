"""The human baseline: Craigslist Bargains' human-human dialogues scored as negotiations (pair ``human+human``)."""

from __future__ import annotations

import functools

import pandas as pd

from agreemate_lib.core.records import Negotiation, Turn
from agreemate_lib.evaluation.tables import negotiation_table


def human_negotiations(split: str = "validation", source: str | None = None, annotated_only: bool = True
                       ) -> list[Negotiation]:
    """Human-human Craigslist Bargains dialogues as negotiations (pair ``human+human``).

    Turns are the dialogue's messages and events with their annotated intents and prices. A deal is an ``accept``
    event; its price is the last ``offer`` event's price (the Craigslist interface's formal offer).
    """
    from agreemate_lib.core.craigslist import iter_annotated_dialogues

    out: list[Negotiation] = []
    for _, sc, hturns in iter_annotated_dialogues(split, source, annotated_only):
        turns = [Turn(index=k, speaker=t.speaker, action=t.action, utterance=t.utterance, price=t.price,
                      action_known=t.action_known, structured=True) for k, t in enumerate(hturns)]
        neg = Negotiation(f"human+human:{sc.scenario_id}:r0", sc.to_dict(), "human", "human", seed=0, turns=turns)
        last_offer = next((t.price for t in reversed(turns) if t.action == "offer" and t.price is not None), None)
        ending = next((t for t in reversed(turns) if t.action in ("accept", "reject", "quit")), None)
        if ending is not None and ending.action == "accept" and last_offer is not None:
            neg.outcome, neg.accepted_price, neg.ended_by = "accepted", last_offer, ending.speaker
        elif ending is not None:
            neg.outcome = {"reject": "rejected", "quit": "quit"}.get(ending.action, "no_deal")
        out.append(neg)
    return out


def human_baseline_table(split: str = "validation", source: str | None = None) -> pd.DataFrame:
    return negotiation_table(human_negotiations(split, source))


@functools.lru_cache(maxsize=4)
def human_act_distribution(split: str = "validation", source: str | None = None) -> dict[str, float]:
    """The dialogue-act distribution of the annotated human dialogues (``unknown`` left out): the reference for
    ``act_divergence``. Empty when the data is not there (the divergence is then NaN, never a made-up number)."""
    from agreemate_lib.evaluation.metrics import act_distribution

    try:
        return act_distribution([[t.action for t in n.turns] for n in human_negotiations(split, source)])
    except FileNotFoundError:
        return {}
