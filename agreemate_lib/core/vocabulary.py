"""The dialogue-act vocabulary of AgreeMate (the paper's 11 acts) and the Craigslist Bargains closing events."""

from __future__ import annotations

#: The 11 dialogue acts of the AgreeMate paper, in its order.
DIALOGUE_ACTS: tuple[str, ...] = (
    "intro",
    "init-price",
    "offer",
    "counter-price",
    "insist",
    "agree",
    "disagree",
    "accept",
    "inform",
    "inquire",
    "unknown",
)

#: Closing events of Craigslist Bargains: either side walks away.
TERMINAL_EVENTS: tuple[str, ...] = ("reject", "quit")

#: Everything a turn's action may be.
VOCABULARY: tuple[str, ...] = DIALOGUE_ACTS + TERMINAL_EVENTS

#: Acts that put a price on the table; a turn with one of these must carry a price.
PRICED_ACTS: frozenset[str] = frozenset({"init-price", "offer", "counter-price", "insist"})

#: Acts that end a negotiation.
ENDING_ACTS: frozenset[str] = frozenset({"accept", "reject", "quit"})

#: The keys of an agent's reply, in the order it writes them (after ``reasoning`` for chain-of-thought agents); the
#: decoder, the prompts, the training targets and the schema sent to servers all follow it. ``price`` comes last,
#: after ``action`` (the act decides whether a price may be null). Words first, ("utterance", "action", "price"),
#: was measured and not kept: adapters retrained for it contradicted their price field about as often as the
#: act-first ones (0.44 against 0.50 on 40 held-out listings at repetition penalty 1.1; 0.269 against 0.269 on 100
#: at 1.0) and reneged more (docs/finetuning_and_probing.md).
REPLY_KEYS: tuple[str, ...] = ("action", "utterance", "price")

#: Acts an agent may choose from when generating (``unknown`` is what parsing falls back to, never a choice).
CHOOSABLE_ACTS: tuple[str, ...] = tuple(a for a in VOCABULARY if a != "unknown")

#: Common spellings seen in model replies and in the published runs, mapped onto the vocabulary.
ACT_ALIASES: dict[str, str] = {
    "introduction": "intro",
    "greet": "intro",
    "greeting": "intro",
    "initial-price": "init-price",
    "init_price": "init-price",
    "initprice": "init-price",
    "counter": "counter-price",
    "counter-offer": "counter-price",
    "counteroffer": "counter-price",
    "counter_price": "counter-price",
    "counter-price-offer": "counter-price",
    "propose": "offer",
    "proposal": "offer",
    "question": "inquire",
    "inquiry": "inquire",
    "ask": "inquire",
    "information": "inform",
    "accepted": "accept",
    "deal": "accept",
    "rejected": "reject",
    "decline": "reject",
    "walk-away": "quit",
    "walkaway": "quit",
    "leave": "quit",
}


def normalize_action(raw: str | None) -> tuple[str, bool]:
    """Map a raw action string onto the vocabulary.

    Returns ``(action, known)``: ``known`` is False when the string matched nothing and ``unknown`` was substituted
    (an explicit ``unknown`` from the model counts as known).
    """
    if raw is None:
        return "unknown", False
    key = str(raw).strip().strip("\"'`*<>[]().:").lower().replace(" ", "-").replace("_", "-")
    if key in VOCABULARY:
        return key, True
    if key in ACT_ALIASES:
        return ACT_ALIASES[key], True
    key2 = key.replace("-", "")
    for act in VOCABULARY:
        if act.replace("-", "") == key2:
            return act, True
    return "unknown", False
