"""The typed state an agent acts on at one turn: what its side knows, nothing of the other side's private data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TurnState:
    """One side's view of one negotiation at one turn.

    ``history`` holds every earlier turn as the prompts show it (speaker, action, utterance, price; ``reasoning``
    and ``raw`` only for this side's own turns)."""

    negotiation_id: str
    role: str  # "buyer" | "seller"
    view: dict[str, Any]  # Scenario.view_for(role): title, description, listing price, own target (and bottom line)
    turn: int  # 0-based index of the turn about to be taken
    max_turns: int
    opens: bool  # this side spoke (or speaks) first
    history: list[dict[str, Any]] = field(default_factory=list)
    other_last_price: float | None = None
    own_last_price: float | None = None
    own_priced_turns: int = 0
