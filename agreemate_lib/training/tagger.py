"""A rule-based dialogue-act tagger and price tracker for Craigslist Bargains, in the spirit of He et al. 2018.

He et al. released machine-generated acts made by rules of this kind; the test split and part of the validation
split carry the utterances but no acts and no prices. :func:`tag_dialogue` labels such a dialogue turn by turn, and
says for each turn whether it is confident. :func:`evaluate_tagger` measures it against the annotated dialogues
(per-act precision/recall and price-extraction accuracy); the numbers go to docs/finetuning_and_probing.md and to the
``role_splits`` asset's metadata.

Rules, in order, for a turn with words:
1. prices: every amount :func:`~agreemate_lib.core.money.price_spans` finds within a plausible band of the listing
   (:data:`PRICE_BAND` times the listing price); the turn's price is the last one;
2. a priced turn is ``agree`` when it names the other side's last price, ``insist`` when it repeats the speaker's
   own last price, ``init-price`` when no price was said before in the dialogue, else ``counter-price``;
3. without a price: a question is ``inquire`` (``intro`` when it is the speaker's first turn and greets), a greeting
   as a speaker's first turn is ``intro``, a no/can't/sorry is ``disagree``, an answer to the other side's question
   is ``inform``, a yes/deal is ``agree``; anything else is ``unknown`` (not confident).
The events with no words (offer, accept, reject, quit): an empty turn followed later by an empty turn of the other
side is ``offer`` at the last price said in the dialogue; the other side's next empty turn is ``accept`` (``reject``
when its last words refused); a last empty turn with no offer pending is ``quit``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from agreemate_lib.core.money import price_spans

#: A number counts as a price when it lies within this band of the listing price.
PRICE_BAND = (0.1, 3.0)

_GREETING = re.compile(r"^\s*(hi|hello|hey|howdy|greetings|good (morning|afternoon|evening))\b", re.I)
_AGREE = re.compile(r"^\s*(yes|yeah|yep|ok|okay|sure|deal|sounds good|great|perfect|agreed|alright|all right|"
                    r"that works|that's fine|fine|i agree|i can do that|let's do it)\b", re.I)
_DISAGREE = re.compile(r"\b(no|nope|sorry|can't|cannot|can not|won't|too (high|low|much|expensive)|not (going|able|"
                       r"willing|interested)|no way|i don't think|that's a lot|lowball)\b", re.I)
_REFUSE = re.compile(r"\b(no deal|not interested|pass|no thanks|no thank you|walk away|too (high|low|much)|"
                     r"can't|cannot|sorry)\b", re.I)


@dataclass(frozen=True)
class TaggedTurn:
    speaker: str
    utterance: str
    action: str
    price: float | None
    #: False where no rule fired with certainty (``unknown``, an event whose kind or price is a guess).
    confident: bool


def plausible_prices(text: str, listing_price: float) -> list[float]:
    lo, hi = PRICE_BAND
    return [s.value for s in price_spans(text) if lo * listing_price <= s.value <= hi * listing_price]


def tag_dialogue(turns: Sequence[tuple[str, str]], listing_price: float) -> list[TaggedTurn]:
    """``turns``: (speaker, utterance) pairs, speaker "buyer"/"seller", utterance "" for the events."""
    out: list[TaggedTurn] = []
    last_price: dict[str, float | None] = {"buyer": None, "seller": None}
    said_before: float | None = None
    spoken: set[str] = set()
    n = len(turns)
    for k, (speaker, utt) in enumerate(turns):
        other = "seller" if speaker == "buyer" else "buyer"
        utt = (utt or "").strip()
        if not utt:
            pending = next((t for t in reversed(out) if not t.utterance), None)
            if pending is not None and pending.action == "offer" and pending.speaker == other:
                refused = _last_words(out, speaker)
                if refused is not None and _REFUSE.search(refused) and not _AGREE.search(refused):
                    out.append(TaggedTurn(speaker, "", "reject", None, False))
                else:
                    out.append(TaggedTurn(speaker, "", "accept", None, True))
            elif any(not (u or "").strip() and who == other for who, u in turns[k + 1:]):
                out.append(TaggedTurn(speaker, "", "offer", said_before, said_before is not None))
            elif k == n - 1 and out:
                out.append(TaggedTurn(speaker, "", "quit", None, True))
            else:
                out.append(TaggedTurn(speaker, "", "unknown", None, False))
            continue
        prices = plausible_prices(utt, listing_price)
        first = speaker not in spoken
        spoken.add(speaker)
        if prices:
            price = prices[-1]
            if last_price[other] is not None and abs(price - last_price[other]) < 0.005:
                act = "agree"  # takes up the other side's own price
            elif last_price[speaker] is not None and abs(price - last_price[speaker]) < 0.005:
                act = "insist"
            elif said_before is None:
                act = "init-price"
            else:
                act = "counter-price"
            out.append(TaggedTurn(speaker, utt, act, price, True))
            last_price[speaker] = price
            said_before = price
            continue
        asked = out[-1].action == "inquire" if out and out[-1].speaker == other else False
        if first and _GREETING.search(utt):
            act, sure = "intro", True
        elif "?" in utt:
            act, sure = ("intro", True) if first and k == 0 else ("inquire", True)
        elif _DISAGREE.search(utt):
            act, sure = "disagree", True
        elif asked:
            act, sure = "inform", True
        elif _AGREE.search(utt):
            act, sure = "agree", True
        else:
            act, sure = "unknown", False
        out.append(TaggedTurn(speaker, utt, act, None, sure))
    return out


def _last_words(tagged: list[TaggedTurn], speaker: str) -> str | None:
    for t in reversed(tagged):
        if t.speaker == speaker and t.utterance:
            return t.utterance
    return None


def evaluate_tagger(dialogues) -> dict:
    """Per-act precision/recall and price accuracy against annotated dialogues.

    ``dialogues``: (listing price, [HumanTurn]) pairs with gold acts (``action_known``) and prices. Gold ``unknown``
    turns are left out of precision/recall (no act to hit); price accuracy: of gold priced turns, the share the
    tracker gives the same price (within 1 cent), and of tracker prices, the share that match the gold price.
    """
    from collections import Counter

    tp, fp, fn = Counter(), Counter(), Counter()
    price_gold = price_hit = price_pred = price_pred_hit = 0
    confident = total = 0
    for listing_price, gold in dialogues:
        tagged = tag_dialogue([(g.speaker, g.utterance) for g in gold], listing_price)
        for g, t in zip(gold, tagged):
            total += 1
            confident += t.confident
            if g.price is not None:
                price_gold += 1
                price_hit += t.price is not None and abs(t.price - g.price) < 0.01
            if t.price is not None:
                price_pred += 1
                price_pred_hit += g.price is not None and abs(t.price - g.price) < 0.01
            if not g.action_known or g.action == "unknown" or not t.confident:
                continue
            if t.action == g.action:
                tp[g.action] += 1
            else:
                fp[t.action] += 1
                fn[g.action] += 1
    acts = sorted(set(tp) | set(fp) | set(fn))
    per_act = {a: {"precision": tp[a] / (tp[a] + fp[a]) if tp[a] + fp[a] else float("nan"),
                   "recall": tp[a] / (tp[a] + fn[a]) if tp[a] + fn[a] else float("nan"),
                   "support": tp[a] + fn[a]} for a in acts}
    hits = sum(tp.values())
    return {"per_act": per_act, "accuracy_confident": hits / max(1, hits + sum(fp.values())),
            "confident_share": confident / max(1, total), "turns": total,
            "price_recall": price_hit / max(1, price_gold), "price_precision": price_pred_hit / max(1, price_pred),
            "gold_priced_turns": price_gold}
