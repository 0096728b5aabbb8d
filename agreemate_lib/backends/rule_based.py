"""A He et al. (2018)-style time-dependent concession agent: no model, same records as the LLM agents."""

from __future__ import annotations

import json
import math

from agreemate_lib.backends.base import ChatBackend, ChatRequest, Completion, GenerationSettings


def planned_price(role: str, target: float, bottom_line: float, turn: int, max_turns: int, beta: float) -> float:
    """Price the agent asks at ``turn``: from its target toward its bottom line, faster as turns run out.

    ``p(t) = target + (bottom_line - target) * (t / T) ** (1 / beta)``; beta < 1 concedes late (Boulware),
    beta > 1 early (Conceder).
    """
    frac = min(1.0, max(0.0, turn / max(1, max_turns - 1)))
    return target + (bottom_line - target) * frac ** (1.0 / beta)


def _round_price(x: float) -> float:
    if x >= 1000:
        return float(round(x / 10) * 10)
    if x >= 100:
        return float(round(x))
    return round(x, 2) if x < 10 else float(round(x))


class RuleBasedBackend(ChatBackend):
    """Reads the structured state in ``request.context``; ignores the messages."""

    def __init__(self, beta: float = 0.5, opening_margin: float = 0.1):
        self.beta = beta
        self.opening_margin = opening_margin
        self.model_id = f"rule-based(beta={beta},margin={opening_margin})"

    def _bounds(self, ctx: dict) -> tuple[float, float]:
        view = ctx["view"]
        if ctx["role"] == "seller":
            target = view["target"] * (1 + self.opening_margin * 0.0)
            return target, view.get("bottom_line", 0.7 * view["listing_price"])
        # The buyer opens a little under its target and will go up to the listing price at most.
        return view["target"] * (1 - self.opening_margin), view["listing_price"]

    def decide(self, ctx: dict) -> dict:
        role = ctx["role"]
        turn, max_turns = ctx["turn"], ctx["max_turns"]
        title = ctx["view"]["title"]
        start, bottom = self._bounds(ctx)
        mine = _round_price(planned_price(role, start, bottom, turn, max_turns, self.beta))
        other = ctx.get("other_last_price")
        own_turns = ctx.get("own_priced_turns", 0)
        last_turn = turn >= max_turns - 2  # this agent's last chance to speak
        acceptable = other is not None and ((role == "seller" and other >= mine) or (role == "buyer" and other <= mine))
        if acceptable:
            return {"action": "accept", "utterance": f"Deal, ${other:,.2f} it is.".replace(".00 ", " "), "price": None}
        within_limit = other is not None and (
            (role == "seller" and other >= bottom) or (role == "buyer" and other <= bottom)
        )
        if last_turn:
            if within_limit:
                return {"action": "accept", "utterance": f"Alright, I'll take ${other:,.2f}.", "price": None}
            return {"action": "reject", "utterance": "Sorry, I can't do that. No deal.", "price": None}
        if own_turns == 0:
            verb = "I can pay" if role == "buyer" else "I'm asking"
            return {"action": "init-price", "utterance": f"Hi! About the {title}: {verb} ${mine:,.2f}.", "price": mine}
        if other is not None and ctx.get("own_last_price") is not None and math.isclose(mine, ctx["own_last_price"]):
            return {"action": "insist", "utterance": f"${mine:,.2f} is really my best.", "price": mine}
        return {"action": "counter-price", "utterance": f"How about ${mine:,.2f}?", "price": mine}

    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        out = []
        for req in requests:
            try:
                reply = self.decide(req.context)
            except KeyError as exc:
                out.append(Completion("", error=f"rule-based agent needs context field {exc}"))
                continue
            out.append(Completion(json.dumps(reply), structured=True))
        return out
