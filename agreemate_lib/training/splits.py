"""Role training data: whole dialogues, one sequence per dialogue and role, for buyer, seller and generalist adapters.

Craigslist Bargains: every dialogue with text (validation and test). The annotated ones keep their acts and prices;
the others are labelled by the rule-based tagger (``training/tagger.py``), and only its confident turns are
targets. A row is the dialogue exactly as the role's agent would see it at its end (system prompt with the listing
and the role's own target, the turns as chat messages, own turns as the chain-of-thought JSON the agents emit, with a
``reasoning`` computed from the numbers); ``train_mask`` marks the messages the loss is on, so one forward pass
trains every turn of the role.

Deal or No Deal (test + validation): each conversation is stored twice (once per side); it is kept once, in the same
layout, with its own ``source`` so its effect can be measured.

Validation holds out whole listings (never rows or single dialogues of a listing seen in training), seeded.
Evaluation listings (``exclude_listings``) never enter either split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from pathlib import Path

import pandas as pd

from agreemate_lib.core.money import format_money
from agreemate_lib.core.vocabulary import PRICED_ACTS, REPLY_KEYS
from agreemate_lib.negotiation.prompts import build_messages, ordered_reply, system_prompt

ROLES = ("buyer", "seller", "generalist")


def numeric_thought(role: str, own_target: float, other_last: float | None, own_last: float | None,
                    price: float | None, action: str, floor: float | None = None) -> str:
    """A short thought from the numbers. It states the standing prices first (theirs, the own last price, the own
    target, the seller's floor) and only then the decision, so an agent that writes its reasoning before its action
    has the numbers in front of it when it decides (accept, counter, walk away). A new price is placed between the
    two numbers it should lie between (the own last price, or the target before one, and theirs), so the model copies
    its bounds into the text right before it writes the price instead of doing arithmetic it cannot."""
    limit = f" (never below {format_money(floor)})" if floor is not None else ""
    mine = f" I was at {format_money(own_last)};" if own_last is not None else ""
    if other_last is not None:
        head = f"They are at {format_money(other_last)};{mine} my target is {format_money(own_target)}{limit}."
    else:
        head = f"No price from them yet;{mine} my target is {format_money(own_target)}{limit}."
    if price is not None and other_last is not None:
        anchor = own_last if own_last is not None else own_target
        if price == anchor:
            return f"{head} I hold at {format_money(price)}."
        if min(anchor, other_last) <= price <= max(anchor, other_last):
            return (f"{head} I answer {format_money(price)}, between {format_money(anchor)} and their "
                    f"{format_money(other_last)}.")
        return f"{head} I answer {format_money(price)}."
    if price is not None:
        gap = (price - own_target) / own_target
        return f"{head} I say {format_money(price)}, {abs(gap):.0%} {'above' if gap >= 0 else 'below'} my target."
    if action == "accept":
        return f"{head} Close enough: I take their price."
    if action in ("reject", "quit"):
        return f"{head} Too far apart: I walk away."
    return f"{head} I talk before I move."


#: Words for the Craigslist events that carry none (an offer, accept, reject or quit made with the button).
EVENT_WORDS = {"accept": "Deal.", "reject": "No deal, thanks.", "quit": "I'll pass, thanks."}


def listing_key(title: str) -> str:
    """A listing's identity across splits: its title, lower-cased, punctuation and spacing collapsed. The same item
    appears in several dialogues (597 validation dialogues cover 131 listings) and in several splits."""
    return re.sub(r"[^a-z0-9]+", " ", str(title).lower()).strip()


def merge_turns(turns: list[dict]) -> list[dict]:
    """Consecutive turns of one speaker become one turn (our agents alternate): words joined; the act is the last
    event (offer/accept/reject/quit) or priced act of the run, else its last act; the price the last one named;
    trainable only if the chosen act's turn was."""
    out: list[dict] = []
    rank = {"offer": 3, "accept": 3, "reject": 3, "quit": 3, **{a: 2 for a in PRICED_ACTS}}
    for t in turns:
        if out and out[-1]["speaker"] == t["speaker"]:
            prev = out[-1]
            words = " ".join(w for w in (prev["utterance"], t["utterance"]) if w)
            take = t if rank.get(t["action"], 1) >= rank.get(prev["action"], 1) else prev
            price = t["price"] if t["price"] is not None else prev["price"]
            out[-1] = {"speaker": t["speaker"], "utterance": words, "action": take["action"],
                       "price": price if take["action"] not in ("accept", "reject", "quit") else None,
                       "trainable": take["trainable"]}
        else:
            out.append(dict(t))
    return out


def craigslist_dialogues(splits: tuple[str, ...] = ("validation", "test"), source: str | None = None) -> list[dict]:
    """Every Craigslist dialogue of ``splits`` with acts and prices: the annotated ones as annotated (a turn the
    annotators left ``unknown`` takes the tagger's confident label, else it is kept as context only), the others as
    the rule-based tagger labels them (only its confident turns are training targets)."""
    from agreemate_lib.core.craigslist import iter_annotated_dialogues
    from agreemate_lib.training.tagger import tag_dialogue

    out = []
    for split in splits:
        for row, sc, hturns in iter_annotated_dialogues(split, source, annotated_only=False):
            tagged = tag_dialogue([(h.speaker, h.utterance) for h in hturns], sc.listing_price)
            gold = any(h.action_known and h.action != "unknown" for h in hturns)
            turns = []
            for h, t in zip(hturns, tagged):
                if gold and h.action_known and h.action != "unknown":
                    action, price, ok = h.action, h.price, not (h.action in PRICED_ACTS and h.price is None)
                else:
                    action, price, ok = t.action, t.price, t.confident
                if action == "unknown":
                    action, ok = "inform", False  # context only: rendered as words, never a target
                turns.append({"speaker": h.speaker, "utterance": h.utterance, "action": action, "price": price,
                              "trainable": ok})
            out.append({"dialogue_id": f"cb-{split}-{row:05d}", "split_source": split, "scenario": sc,
                        "labels": "annotated" if gold else "tagger", "turns": merge_turns(turns),
                        "listing_key": listing_key(sc.title)})
    return out


def accepts_outside_limits(dialogue: dict) -> list[int]:
    """Indices of the turns that accept a price outside the accepting side's own limits: a seller taking less than
    its bottom line, a buyer paying more than the listing price (84 sellers' and 7 buyers' accepts in validation
    and test). They stay in the dialogue as context but are never training targets: the adapters should not learn
    them."""
    sc = dialogue["scenario"]
    limit = {"seller": sc.view_for("seller")["bottom_line"], "buyer": sc.listing_price}
    last: dict[str, float | None] = {"buyer": None, "seller": None}
    out = []
    for k, t in enumerate(dialogue["turns"]):
        other = "seller" if t["speaker"] == "buyer" else "buyer"
        p = last[other]
        if t["action"] == "accept" and p is not None and (
                p < limit["seller"] if t["speaker"] == "seller" else p > limit["buyer"]):
            out.append(k)
        if t["price"] is not None:
            last[t["speaker"]] = t["price"]
    return out


def reneging_turns(dialogue: dict) -> list[int]:
    """Indices of the turns whose price moves away from the other side (a buyer lowering, a seller raising its own
    last price): 168 of the 1,747 price moves in validation and test, mostly the price tracker's misreadings. They
    stay in the dialogue as context but are never training targets (the ``reneging_rate`` metric counts them)."""
    from agreemate_lib.evaluation.metrics import price_moves

    turns = dialogue["turns"]
    return [k for k, away in price_moves([t["speaker"] for t in turns], [t["price"] for t in turns]) if away]


def dialogue_sequence(dialogue: dict, role: str, max_turns: int = 15) -> tuple[list[dict], list[bool]]:
    """The whole dialogue as ``role`` sees it after its end (the chat prompt our agents get, extended by every
    turn): the messages, and per message whether it is a training target (the role's own confident turns, except
    an accept outside its own limits, :func:`accepts_outside_limits`, and a price that reneges,
    :func:`reneging_turns`)."""
    sc = dialogue["scenario"]
    view = sc.view_for(role)
    history: list[dict] = []
    last = {"buyer": None, "seller": None}
    for t in dialogue["turns"]:
        other = "seller" if t["speaker"] == "buyer" else "buyer"
        own_view = sc.view_for(t["speaker"])
        thought = numeric_thought(t["speaker"], own_view["target"], last[other], last[t["speaker"]], t["price"],
                                  t["action"], own_view.get("bottom_line"))
        words = t["utterance"] or (EVENT_WORDS.get(t["action"]) if t["action"] in EVENT_WORDS else
                                   f"How about {format_money(t['price'])}?" if t["price"] is not None else "")
        history.append({"speaker": t["speaker"], "action": t["action"], "utterance": words, "price": t["price"],
                        "reasoning": thought})
        if t["price"] is not None:
            last[t["speaker"]] = t["price"]
    opens = bool(history) and history[0]["speaker"] == role
    msgs = build_messages(role, system_prompt(role, view, cot=True, max_turns=max_turns), history, max_turns, opens)
    # build_messages emits one message per turn after the system (and the opening invitation): align the flags
    head = 2 if opens else 1
    flags = [False] * len(msgs)
    outside = set(accepts_outside_limits(dialogue)) | set(reneging_turns(dialogue))
    for k, t in enumerate(dialogue["turns"]):
        i = head + k
        if i < len(msgs) and t["speaker"] == role and t["trainable"] and k not in outside:
            flags[i] = True
    if msgs[-1]["role"] == "user" and len(msgs) > head + len(dialogue["turns"]):
        msgs, flags = msgs[:-1], flags[:-1]  # the closing turn note after a final own turn teaches nothing
    return msgs, flags


def dialogue_frame(dialogues: list[dict], max_turns: int = 15) -> pd.DataFrame:
    """One row per dialogue and role: ``messages`` (JSON), ``train_mask`` (JSON list of bools), counts."""
    rows = []
    for d in dialogues:
        if len(d["turns"]) > max_turns or len(d["turns"]) < 2:
            continue
        for role in ("buyer", "seller"):
            msgs, flags = dialogue_sequence(d, role, max_turns)
            own = [t for t in d["turns"] if t["speaker"] == role]
            rows.append({"source": "craigslist", "dialogue_id": d["dialogue_id"], "role": role,
                         "split_source": d["split_source"], "labels": d["labels"], "listing_key": d["listing_key"],
                         "messages": json.dumps(msgs), "train_mask": json.dumps(flags),
                         "target_turns": int(sum(flags)), "own_turns": len(own),
                         "actions": json.dumps([t["action"] for t in own]), "turns": len(d["turns"])})
    return pd.DataFrame(rows)


_DOND = re.compile(r"<input>(.*?)</input>\s*<dialogue>(.*?)</dialogue>\s*<output>(.*?)</output>\s*"
                   r"<partner_input>(.*?)</partner_input>")


def dond_frame(paths: list[str | Path]) -> pd.DataFrame:
    """Deal or No Deal conversations, each kept once (it is stored once per side), one row per conversation and role
    in the same whole-dialogue layout as :func:`dialogue_frame`. Turns carry no prices: utterances are ``inform``,
    the final selection ``accept`` only when both sides agreed (a "no deal" is ``reject``). The side that speaks first
    plays the buyer."""
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
            parsed = []
            for t in turns:
                who, _, text = t.partition(":")
                who, text = who.strip(), text.strip()
                if text == "<selection>":
                    action, utt = ("accept" if agreed else "reject"), ("Deal." if agreed else "No deal.")
                else:
                    action, utt = "inform", text
                parsed.append((who, speaker_role.get(who, "buyer"), action, utt))
            dialogue_id = f"dond-{Path(path).stem}-{line_no:05d}"
            for role in ("buyer", "seller"):
                me = next((w for w, r in speaker_role.items() if r == role), "YOU")
                own = inp if me == "YOU" else partner
                nums = [int(x) for x in own.split()] if own else []
                items = ", ".join(f"{c} {name} worth {v} each" for name, c, v in
                                  zip(("books", "hats", "balls"), nums[0::2], nums[1::2]))
                sys = ("You are splitting a set of items with another person; each of you values them differently. "
                       f"There are {items or 'some items'} to you. Reply with one JSON object with the keys "
                       + ", ".join(f'"{k}"' for k in ("reasoning", *REPLY_KEYS[:-1])) + f' and "{REPLY_KEYS[-1]}" '
                       "(always null here).")
                msgs, flags = [{"role": "system", "content": sys}], [False]
                if parsed and parsed[0][1] != role:
                    pass
                else:
                    msgs.append({"role": "user", "content": "[Your turn.]"})
                    flags.append(False)
                actions = []
                for _who, r, action, utt in parsed:
                    if r == role:
                        thought = ("We agreed on a split." if action == "accept" else "We could not agree; no deal."
                                   if action == "reject" else "I state what I want and see what they value.")
                        msgs.append({"role": "assistant", "content": json.dumps(ordered_reply(
                            {"reasoning": thought, "action": action, "utterance": utt, "price": None}))})
                        flags.append(True)
                        actions.append(action)
                    else:
                        msgs.append({"role": "user", "content": utt})
                        flags.append(False)
                if msgs[-1]["role"] == "user" and len(msgs) > 2:
                    msgs, flags = msgs[:-1], flags[:-1]
                rows.append({"source": "dealornodeal", "dialogue_id": dialogue_id, "role": role,
                             "split_source": Path(path).stem, "labels": "dataset", "listing_key": dialogue_id,
                             "messages": json.dumps(msgs), "train_mask": json.dumps(flags),
                             "target_turns": int(sum(flags)), "own_turns": int(sum(flags)),
                             "actions": json.dumps(actions), "turns": len(parsed)})
    return pd.DataFrame(rows)


def split_by_listing(df: pd.DataFrame, validation_fraction: float = 0.1, seed: int = 0) -> pd.DataFrame:
    """Add ``split`` (train/validation), holding out whole listings (every dialogue about a held-out item), seeded."""
    ids = sorted(df["listing_key"].unique())
    rng = random.Random(seed)
    rng.shuffle(ids)
    n_val = max(1, int(round(validation_fraction * len(ids))))
    val = set(ids[:n_val])
    return df.assign(split=df["listing_key"].map(lambda d: "validation" if d in val else "train"))


def build_role_splits(source: str | None = None, dond_dir: str | Path | None = None,
                      exclude_listings: set[str] | frozenset[str] = frozenset(), validation_fraction: float = 0.1,
                      seed: int = 0, max_turns: int = 15) -> dict[str, pd.DataFrame]:
    """{"buyer", "seller", "generalist"} -> whole-dialogue rows with a ``split`` column.

    Craigslist: every validation and test dialogue (annotated acts where they exist, the tagger's elsewhere), minus
    the dialogues about ``exclude_listings`` (the evaluation listings, by :func:`listing_key`: none of them is ever
    trained on); Deal or No Deal (deduplicated) in the same layout, ``source == "dealornodeal"``, so a config can
    include or leave it out. The generalist holds both roles of every dialogue.
    """
    cb = dialogue_frame(craigslist_dialogues(("validation", "test"), source), max_turns)
    cb = cb[~cb["listing_key"].isin(set(exclude_listings))]
    parts = [split_by_listing(cb, validation_fraction, seed)]
    if dond_dir and Path(dond_dir).is_dir():
        dd = dond_frame(sorted(Path(dond_dir).glob("*.txt")))
        parts.append(split_by_listing(dd, validation_fraction, seed))
    allx = pd.concat(parts, ignore_index=True)
    allx["example_id"] = allx["dialogue_id"] + ":" + allx["role"]
    allx = allx.sort_values("example_id").reset_index(drop=True)
    return {"buyer": allx[allx["role"] == "buyer"].reset_index(drop=True),
            "seller": allx[allx["role"] == "seller"].reset_index(drop=True),
            "generalist": allx}


def heldout_train_scenarios(n: int, seed: int = 0, source: str | None = None,
                            exclude_listings: set[str] | frozenset[str] = frozenset()):
    """A seeded sample of ``n`` train listings (train_scenarios.csv: no dialogues) whose listing is none of
    ``exclude_listings`` (pass the trained listings): scenarios for studies larger than the paper's 30."""
    from agreemate_lib.core.scenarios import load_scenarios

    pool = [s for s in load_scenarios("train", source).scenarios if listing_key(s.title) not in exclude_listings]
    if n > len(pool):
        raise ValueError(f"asked for {n} held-out train listings but only {len(pool)} are not excluded")
    return random.Random(seed).sample(pool, n)


def project_role_splits(source: str | None = None, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The role splits as the project trains on them: the data setting's Deal or No Deal folder included, the
    paper's evaluation listings excluded (what ``role_splits`` and ``agreemate train`` build)."""
    from agreemate_lib.core.settings import data_dir
    from agreemate_lib.evaluation.paper import paper_scenarios_keys

    d = data_dir()
    return build_role_splits(source, d / "deal_or_no_deal" if d else None, exclude_listings=paper_scenarios_keys(),
                             seed=seed)


@functools.lru_cache(maxsize=4)
def trained_listing_keys(source: str | None = None, seed: int = 0) -> frozenset[str]:
    """The listings whose dialogues an adapter of this project trains on (the train split of the role splits built
    with the default settings): probing and evaluation leave them out, so what they find is not memorisation."""
    from agreemate_lib.evaluation.paper import paper_scenarios_keys

    try:
        paper = paper_scenarios_keys()
    except FileNotFoundError:
        paper = frozenset()
    g = build_role_splits(source, exclude_listings=paper, seed=seed)["generalist"]
    return frozenset(g.loc[g["split"] == "train", "listing_key"])
