"""Agents without a model: a He et al. (2018)-style time-dependent concession policy on the typed turn state."""

from __future__ import annotations

import math

from agreemate_lib.core.money import format_money
from agreemate_lib.negotiation.state import TurnState


def planned_price(role: str, target: float, bottom_line: float, turn: int, max_turns: int, beta: float) -> float:
    """Price the agent asks at ``turn``: from its target toward its bottom line, faster as turns run out.

    ``p(t) = target + (bottom_line - target) * (t / T) ** (1 / beta)``; beta < 1 concedes late (Boulware),
    beta > 1 early (Conceder).
    """
    frac = min(1.0, max(0.0, turn / max(1, max_turns - 1)))
    return target + (bottom_line - target) * frac ** (1.0 / beta)


def round_price(x: float) -> float:
    if x >= 1000:
        return float(round(x / 10) * 10)
    if x >= 100:
        return float(round(x))
    return round(x, 2) if x < 10 else float(round(x))


def _money(x: float) -> str:
    return format_money(x, cents="always")


class ConcessionPolicy:
    """Opens a little beyond its target, concedes toward its bottom line on a time schedule, accepts any offer at
    least as good as its current plan, and on its last turn accepts anything within its limit or walks away."""

    def __init__(self, beta: float = 0.5, opening_margin: float = 0.1):
        self.beta = beta
        self.opening_margin = opening_margin

    def _bounds(self, st: TurnState) -> tuple[float, float]:
        view = st.view
        if st.role == "seller":
            return view["target"], view.get("bottom_line", 0.7 * view["listing_price"])
        # The buyer opens a little under its target and will go up to the listing price at most.
        return view["target"] * (1 - self.opening_margin), view["listing_price"]

    def decide(self, st: TurnState) -> dict:
        role, other = st.role, st.other_last_price
        start, bottom = self._bounds(st)
        mine = round_price(planned_price(role, start, bottom, st.turn, st.max_turns, self.beta))
        last_turn = st.turn >= st.max_turns - 2  # this agent's last chance to speak
        acceptable = other is not None and ((role == "seller" and other >= mine) or (role == "buyer" and other <= mine))
        if acceptable:
            return {"action": "accept", "utterance": f"Deal, {_money(other)} it is.".replace(".00 ", " "),
                    "price": None}
        within_limit = other is not None and (
            (role == "seller" and other >= bottom) or (role == "buyer" and other <= bottom)
        )
        if last_turn:
            if within_limit:
                return {"action": "accept", "utterance": f"Alright, I'll take {_money(other)}.", "price": None}
            return {"action": "reject", "utterance": "Sorry, I can't do that. No deal.", "price": None}
        if st.own_priced_turns == 0:
            verb = "I can pay" if role == "buyer" else "I'm asking"
            return {"action": "init-price", "utterance": f"Hi! About the {st.view['title']}: {verb} {_money(mine)}.",
                    "price": mine}
        if other is not None and st.own_last_price is not None and math.isclose(mine, st.own_last_price):
            return {"action": "insist", "utterance": f"{_money(mine)} is really my best.", "price": mine}
        return {"action": "counter-price", "utterance": f"How about {_money(mine)}?", "price": mine}
