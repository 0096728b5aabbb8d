"""The human-human Craigslist Bargains dialogues, turn by turn with their annotated intents and prices."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from agreemate_lib.core.scenarios import Scenario, ScenarioError, _from_hf_row, iter_raw_rows
from agreemate_lib.core.vocabulary import normalize_action


@dataclass(frozen=True)
class HumanTurn:
    speaker: str
    action: str
    action_known: bool
    utterance: str
    price: float | None


def iter_annotated_dialogues(split: str = "validation", source: str | None = None, annotated_only: bool = True
                             ) -> Iterator[tuple[int, Scenario, list[HumanTurn]]]:
    """(row, scenario, turns) per dialogue; rows that are not valid scenarios are skipped."""
    for row, rec in enumerate(iter_raw_rows(split, source)):
        acts = rec.get("dialogue_acts") or {}
        intents, prices = list(acts.get("intent") or []), list(acts.get("price") or [])
        if annotated_only and not any(intents):
            continue
        try:
            sc = _from_hf_row(split, row, rec, 0.7)
        except ScenarioError:
            continue
        roles = list(rec["agent_info"]["Role"])
        turns = []
        for k, (agent, utt) in enumerate(zip(rec["agent_turn"], rec["utterance"])):
            action, known = normalize_action((intents[k] if k < len(intents) else "") or "unknown")
            price = prices[k] if k < len(prices) and prices[k] not in (None, -1, -1.0) else None
            turns.append(HumanTurn(roles[agent], action, known, utt or "", None if price is None else float(price)))
        yield row, sc, turns
