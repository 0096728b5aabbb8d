"""What an LLM agent is told: its role, its knowledge base, the reply contract, scaled examples, the conversation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agreemate_lib.core.money import format_money
from agreemate_lib.core.vocabulary import REPLY_KEYS

PERSONALITIES: dict[str, str] = {
    "": "",
    "aggressive": (
        "Personality: aggressive. Goal: get as close to your target as possible, whatever it takes. Concession style: "
        "hold your price, concede rarely, in small steps, and only late in the conversation. Conflict: you do not mind "
        "pushing back hard and you are ready to walk away from a bad deal."
    ),
    "fair": (
        "Personality: fair. Goal: a price both sides can accept, near the middle of your positions. Concession style: "
        "match the other side's concessions step for step and explain your reasons. Conflict: stay polite and "
        "look for a split that is fair to both."
    ),
    "passive": (
        "Personality: passive. Goal: close the deal smoothly rather than win every dollar. Concession style: concede "
        "readily in generous steps. Conflict: avoid escalation, agree where you can, and never argue."
    ),
}


def _round(x: float) -> float:
    if x >= 1000:
        return float(round(x / 10) * 10)
    if x >= 20:
        return float(round(x))
    return round(x, 1)


def few_shot_examples(role: str, listing_price: float, cot: bool) -> list[dict[str, Any]]:
    """Example replies whose prices scale with the listing (never fixed dollar amounts)."""
    L = listing_price
    if role == "buyer":
        ex = [
            {"action": "inquire", "utterance": "Hi! Is it still available, and what condition is it in?",
             "price": None},
            {"action": "offer", "utterance": f"Would you take {format_money(_round(0.75 * L))} for it?",
             "price": _round(0.75 * L)},
            {"action": "counter-price",
             "utterance": f"That's too much for me. I could go to {format_money(_round(0.82 * L))}.",
             "price": _round(0.82 * L)},
        ]
    else:
        ex = [
            {"action": "inform", "utterance": "Yes, it's in great shape and works perfectly.", "price": None},
            {"action": "counter-price",
             "utterance": f"I can't go that low, but I could do {format_money(_round(0.95 * L))}.",
             "price": _round(0.95 * L)},
            {"action": "insist", "utterance": f"{format_money(_round(0.92 * L))} is my best price, it's worth it.",
             "price": _round(0.92 * L)},
        ]
    if cot:
        thoughts = ["I should learn more before naming a price.", "Open well below my limit to leave room.",
                    "Concede a little, but stay near my target."]
        ex = [{"reasoning": t} | e for t, e in zip(thoughts, ex)]
    return [ordered_reply(e) for e in ex]


def ordered_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply's keys in the order agents write them (``reasoning`` first where present, then ``REPLY_KEYS``)."""
    keys = (("reasoning",) if reply.get("reasoning") else ()) + REPLY_KEYS
    return {k: reply.get(k) for k in keys}


#: The part of every system prompt that does not depend on the agent or the listing. It comes first, so a local
#: backend computes its keys and values once and every negotiation reuses them (see backends/prefix_cache.py).
CONTRACT = (
    "You are haggling on Craigslist, one message at a time.\n"
    "Reply with one JSON object and nothing else, with the keys {fields}"
    + ", ".join(f'"{k}"' for k in REPLY_KEYS[:-1]) + f' and "{REPLY_KEYS[-1]}".\n'
    + "\"action\" is one of:\n"
    "- intro: greet the other side\n"
    "- init-price: name your first price\n"
    "- offer: propose a price\n"
    "- counter-price: answer their price with another\n"
    "- insist: repeat your last price\n"
    "- agree / disagree: agree or disagree with what they said\n"
    "- accept: take the other side's latest price (this ends the negotiation with a deal)\n"
    "- inform: answer a question or describe the item\n"
    "- inquire: ask a question\n"
    "- reject: turn down their latest price and walk away (no deal)\n"
    "- quit: walk away (no deal)\n"
    "\"utterance\" is what you say to the other side.\n"
    "\"price\" is the number you propose in this message, or null.\n"
    "Keep your target price secret.\n"
)


def system_prompt(role: str, view: dict[str, Any], personality: str = "", cot: bool = False,
                  max_turns: int = 15) -> str:
    """Generic contract first (shared by every negotiation), then the role, the listing and scaled examples."""
    other = "seller" if role == "buyer" else "buyer"
    goal = (
        "You are the buyer. Buy the item for as little as possible; your target price is "
        f"{format_money(view['target'])}."
        if role == "buyer"
        else f"You are the seller. Sell the item for as much as possible; your target price is "
        f"{format_money(view['target'])} and you never accept less than {format_money(view['bottom_line'])}."
    )
    desc = (view.get("description") or "")[:400]
    fields = '"reasoning" (a short private thought, never shown to the other side), ' if cot else ""
    lines = [
        CONTRACT.format(fields=fields),
        goal,
        f"You talk with the {other}; the negotiation has at most {max_turns} messages in all.",
        PERSONALITIES.get(personality, ""),
        "",
        "The listing:",
        f"- Title: {view['title']}",
        f"- Category: {view['category']}",
        f"- Listing price: {format_money(view['listing_price'])}",
        f"- Description: {desc}",
        "",
        "Examples of replies:",
        *(json.dumps(e) for e in few_shot_examples(role, view["listing_price"], cot)),
    ]
    return "\n".join(line for line in lines if line is not None).replace("\n\n\n", "\n\n")


def turn_note(turns_left: int) -> str:
    return f"[{turns_left} message{'s' if turns_left != 1 else ''} left in the negotiation.]"


def describe_other_turn(speaker: str, action: str, utterance: str, price: float | None) -> str:
    """How the other side's turn reads: its words, then the price it put in its price field, if any.

    The price is shown beside the words because the words may omit it or say another number: an agent that saw only
    the words could not tell that an offer stood (a seller reasoned "no price from them yet" after a $37 offer and
    accepted below its floor). Training rows and run-time prompts both come from here, so they read the same.
    With no words: the event for accept/reject/quit, or the price alone.
    """
    if utterance:
        if price is not None and action not in ("accept", "reject", "quit"):
            return f"{utterance} [The {speaker} proposes {format_money(price)}.]"
        return utterance
    if action == "accept":
        return f"[The {speaker} accepts.]"
    if action in ("reject", "quit"):
        return f"[The {speaker} walks away.]"
    return f"[The {speaker} proposes {format_money(price)}.]" if price is not None else f"[The {speaker} says nothing.]"


def build_messages(role: str, system: str, history: Sequence[dict[str, Any]], max_turns: int,
                   opens: bool) -> list[dict[str, str]]:
    """Chat messages for one turn: own turns as assistant (as generated), the other side's as user (their words).

    The other side's reasoning is never shown. Each user message ends with a note of the messages left at that
    point; a message, once written, never changes, so each prompt extends the previous one (KV-cache reuse).
    ``opens``: this side speaks first (then a first user message invites it to start).
    """
    msgs: list[dict[str, str]] = [{"role": "system", "content": system}]
    if opens:
        msgs.append({"role": "user", "content": "[You start the conversation.]\n" + turn_note(max_turns)})
    for k, t in enumerate(history):
        if t["speaker"] == role:
            if t.get("raw"):  # the reply exactly as generated
                msgs.append({"role": "assistant", "content": t["raw"]})
                continue
            msgs.append({"role": "assistant", "content": json.dumps(ordered_reply(t))})
        else:
            words = describe_other_turn(t["speaker"], t["action"], t["utterance"], t["price"])
            msgs.append({"role": "user", "content": words + "\n" + turn_note(max_turns - k - 1)})
    if msgs[-1]["role"] != "user":  # should not happen with alternating turns; keep the chat valid anyway
        msgs.append({"role": "user", "content": turn_note(max_turns - len(history))})
    return msgs
