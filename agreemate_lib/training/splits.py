"""Role training splits: (context -> turn) examples for buyer, seller and generalist adapters.

Craigslist Bargains (annotated validation dialogues): every buyer/seller turn with an annotated intent becomes an
example whose context is exactly what our agents see (system prompt with the listing and the role's own target,
the conversation so far as chat messages) and whose target is the turn as the chain-of-thought JSON the agents emit,
with a short ``reasoning`` computed from the numbers (never "None").

Deal or No Deal (test + validation): each conversation is stored twice (once per side); it is kept once. Its turns
carry no prices: utterances become ``inform`` turns and the final selection ``accept`` only when both sides agreed
(a "no deal" is ``reject``, never ``accept``). The side that speaks first plays the buyer.

Splits hold out whole dialogues (never rows) for validation, seeded.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pandas as pd

from agreemate_lib.core.money import format_money
from agreemate_lib.core.vocabulary import PRICED_ACTS
from agreemate_lib.negotiation.prompts import build_messages, system_prompt

ROLES = ("buyer", "seller", "generalist")


def numeric_thought(role: str, own_target: float, other_last: float | None, own_last: float | None,
                    price: float | None, action: str) -> str:
    """A short thought from the numbers: where this turn's price sits between own target and the other's offer."""
    if price is not None and other_last is not None and other_last != own_target:
        share = (price - own_target) / (other_last - own_target)
        return (f"They are at {format_money(other_last)}, my target is {format_money(own_target)}; "
                f"{format_money(price)} goes {share:.0%} of the way toward them.")
    if price is not None:
        gap = (price - own_target) / own_target
        side = "above" if gap >= 0 else "below"
        return (f"No offer from them yet; {format_money(price)} is {abs(gap):.0%} {side} my target of "
                f"{format_money(own_target)}.")
    if action == "accept" and other_last is not None:
        return f"Their {format_money(other_last)} is acceptable against my target of {format_money(own_target)}."
    if other_last is not None:
        return f"They are at {format_money(other_last)}; my target is {format_money(own_target)}. I talk before moving."
    return f"My target is {format_money(own_target)}; I learn more before naming a price."


def craigslist_examples(split: str = "validation", source: str | None = None) -> pd.DataFrame:
    from agreemate_lib.core.craigslist import iter_annotated_dialogues

    rows = []
    for row, sc, hturns in iter_annotated_dialogues(split, source):
        history: list[dict] = []
        last = {"buyer": None, "seller": None}
        dialogue_id = f"cb-{split}-{row:05d}"
        for k, ht in enumerate(hturns):
            role, action, utt, price = ht.speaker, ht.action, ht.utterance, ht.price
            other = "seller" if role == "buyer" else "buyer"
            if action == "unknown" or (action in PRICED_ACTS and price is None):
                pass  # not a clean training target; it still enters the history below
            elif utt or action in ("accept", "reject", "quit", "offer"):
                view = sc.view_for(role)
                msgs = build_messages(role, system_prompt(role, view, cot=True), history, 15,
                                      opens=(history[0]["speaker"] == role) if history else True)
                thought = numeric_thought(role, view["target"], last[other], last[role], price, action)
                target = {"reasoning": thought, "action": action,
                          "utterance": utt or ("Deal." if action == "accept" else ""), "price": price}
                rows.append({"source": "craigslist", "dialogue_id": dialogue_id, "turn": k, "role": role,
                             "messages": json.dumps(msgs), "target": json.dumps(target), "action": action,
                             "price": price})
            history.append({"speaker": role, "action": action, "utterance": utt or "", "price": price})
            if price is not None:
                last[role] = price
    return pd.DataFrame(rows)


_DOND = re.compile(r"<input>(.*?)</input>\s*<dialogue>(.*?)</dialogue>\s*<output>(.*?)</output>\s*"
                   r"<partner_input>(.*?)</partner_input>")


def dond_examples(paths: list[str | Path]) -> pd.DataFrame:
    """Deal or No Deal conversations, each kept once (it is stored once per side)."""
    seen: set[str] = set()
    rows = []
    for path in paths:
        for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
            m = _DOND.search(line)
            if not m:
                continue
            inp, dialogue, output, partner = (g.strip() for g in m.groups())
            turns = [t.strip() for t in dialogue.split("<eos>") if t.strip()]
            # the same conversation seen from the other side: swap YOU/THEM and the inputs
            canon = " | ".join(t.replace("YOU:", "A:").replace("THEM:", "B:") for t in turns)
            mirror = " | ".join(t.replace("YOU:", "B:").replace("THEM:", "A:") for t in turns)
            key = hashlib.sha1(min(canon + inp + partner, mirror + partner + inp).encode()).hexdigest()
            if key in seen:
                continue
            seen.add(key)
            agreed = "<no_agreement>" not in output and "<disagree>" not in output and "<disconnect>" not in output
            first = turns[0].split(":", 1)[0] if turns else "YOU"
            speaker_role = {first: "buyer", ("THEM" if first == "YOU" else "YOU"): "seller"}
            history: list[dict] = []
            dialogue_id = f"dond-{Path(path).stem}-{line_no:05d}"
            for k, t in enumerate(turns):
                who, _, text = t.partition(":")
                who, text = who.strip(), text.strip()
                role = speaker_role.get(who, "buyer")
                if text == "<selection>":
                    action, utt = ("accept" if agreed else "reject"), ("Deal." if agreed else "No deal.")
                else:
                    action, utt = "inform", text
                own = inp if (who == "YOU") else partner
                nums = [int(x) for x in own.split()] if own else []
                items = ", ".join(f"{c} {name} worth {v} each" for name, c, v in
                                  zip(("books", "hats", "balls"), nums[0::2], nums[1::2]))
                sys = ("You are splitting a set of items with another person; each of you values them differently. "
                       f"There are {items or 'some items'} to you. Reply with one JSON object with the keys "
                       "\"reasoning\", \"action\", \"utterance\" and \"price\" (always null here).")
                msgs = [{"role": "system", "content": sys}]
                msgs += [{"role": "assistant" if h["speaker"] == role else "user", "content": h["utterance"]}
                         for h in history]
                if not history or msgs[-1]["role"] == "assistant":
                    msgs.append({"role": "user", "content": "[Your turn.]"})
                thought = ("We agreed on a split." if action == "accept" else "We could not agree; no deal."
                           if action == "reject" else "I state what I want and see what they value.")
                target = {"reasoning": thought, "action": action, "utterance": utt, "price": None}
                rows.append({"source": "dealornodeal", "dialogue_id": dialogue_id, "turn": k, "role": role,
                             "messages": json.dumps(msgs), "target": json.dumps(target), "action": action,
                             "price": None})
                history.append({"speaker": role, "utterance": utt})
    return pd.DataFrame(rows)


def split_by_dialogue(df: pd.DataFrame, validation_fraction: float = 0.15, seed: int = 0) -> pd.DataFrame:
    """Add ``split`` (train/validation), holding out whole dialogues, seeded."""
    ids = sorted(df["dialogue_id"].unique())
    rng = random.Random(seed)
    rng.shuffle(ids)
    n_val = max(1, int(round(validation_fraction * len(ids))))
    val = set(ids[:n_val])
    return df.assign(split=df["dialogue_id"].map(lambda d: "validation" if d in val else "train"))


def build_role_splits(source: str | None = None, dond_dir: str | Path | None = None, include_dond: bool = True,
                      validation_fraction: float = 0.15, seed: int = 0) -> dict[str, pd.DataFrame]:
    """{"buyer", "seller", "generalist"} -> examples with a ``split`` column; generalist is balanced by role."""
    parts = [craigslist_examples("validation", source)]
    if include_dond and dond_dir and Path(dond_dir).is_dir():
        parts.append(dond_examples(sorted(Path(dond_dir).glob("*.txt"))))
    allx = pd.concat(parts, ignore_index=True).drop_duplicates(["messages", "target"]).reset_index(drop=True)
    allx = split_by_dialogue(allx, validation_fraction, seed)
    allx["example_id"] = allx["dialogue_id"] + ":" + allx["turn"].astype(str) + ":" + allx["role"]
    buyer = allx[allx["role"] == "buyer"].reset_index(drop=True)
    seller = allx[allx["role"] == "seller"].reset_index(drop=True)
    n = min(len(buyer), len(seller))
    generalist = pd.concat([buyer.sample(n, random_state=seed), seller.sample(n, random_state=seed)])
    return {"buyer": buyer, "seller": seller,
            "generalist": generalist.sort_values("example_id").reset_index(drop=True)}
