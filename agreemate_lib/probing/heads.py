"""Attention probing: which heads link prices to negotiation verbs, measured with CIs and ranked.

For each transcript (tokenised with the chat template the agents used), tokens are tagged by word-to-token alignment
from the tokenizer's offsets: prices (numbers, "$" amounts), negotiation verbs (sell, buy, offer, pay, take, give,
accept, deal, ...), control verbs of similar frequency (know, think, see, ...), and other tokens. For every layer
and head, from each price token (query) we sum the attention it gives to negotiation-verb tokens and to control-verb
tokens among the keys it can see, averaged over the transcript's price tokens:

    mass_verb[l, h]    = mean_q  sum_{k in verbs, k < q} A[l, h, q, k]
    mass_control[l, h] = mean_q  sum_{k in controls, k < q} A[l, h, q, k]
    per-key masses     = mass_verb / n_verb_keys, mass_control / n_control_keys  (so word counts do not decide)
    ratio[l, h]        = mean over transcripts of the per-key verb mass / the same for control verbs

(a ratio of means: a transcript whose control verbs get almost no attention cannot blow the estimate up), and the
same restricted to keys in an earlier message than the query (long-distance links across turns). Percentile
bootstrap 95% CIs resample transcripts; heads are ranked by the ratio (ties by layer, head).
Attention weights need ``attn_implementation="eager"`` (sdpa returns none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from agreemate_lib.core.money import price_spans

NEGOTIATION_VERBS = ("sell", "sells", "selling", "sold", "buy", "buys", "buying", "bought", "offer", "offers",
                     "offered", "offering", "pay", "pays", "paying", "paid", "take", "takes", "taking", "took",
                     "give", "gives", "giving", "gave", "accept", "accepts", "accepted", "deal", "deals", "counter",
                     "afford", "lower", "cost", "costs", "charge")
CONTROL_VERBS = ("know", "knows", "knew", "think", "thinks", "thought", "see", "sees", "saw", "look", "looks",
                 "looking", "like", "likes", "liked", "need", "needs", "make", "makes", "made", "come", "comes",
                 "came", "try", "tried", "mean", "feel", "hope", "wonder")
TAGS = ("other", "price", "verb", "control")
# Numbers and "$" amounts, but not the runner's "[N messages left]" notes.
_WORD_RE = re.compile(r"[A-Za-z]+")


def tag_tokens(text: str, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Tag id per token (index into TAGS) from character spans of prices and verbs."""
    spans: list[tuple[int, int, int]] = [(p.start, p.end, 1) for p in price_spans(text)]
    verbs, controls = set(NEGOTIATION_VERBS), set(CONTROL_VERBS)
    for m in _WORD_RE.finditer(text):
        w = m.group().lower()
        if w in verbs:
            spans.append((m.start(), m.end(), 2))
        elif w in controls:
            spans.append((m.start(), m.end(), 3))
    tags = np.zeros(len(offsets), dtype=np.int8)
    spans.sort()
    j = 0
    for i, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        k = j
        while k < len(spans) and spans[k][0] < b:
            if spans[k][1] > a:
                tags[i] = spans[k][2]
                break
            k += 1
    return tags


def message_index(text: str, offsets: list[tuple[int, int]], marker: str = "<|im_start|>") -> np.ndarray:
    """Which chat message each token belongs to (for long-distance links across turns)."""
    starts = [m.start() for m in re.finditer(re.escape(marker), text)]
    ends = [a for a, _ in offsets]
    return np.searchsorted(np.array(starts), np.array(ends), side="right")


@dataclass
class HeadMasses:
    """Per transcript: arrays of shape (layers, heads)."""

    mass_verb: np.ndarray
    mass_control: np.ndarray
    ratio: np.ndarray
    ld_mass_verb: np.ndarray
    ld_mass_control: np.ndarray
    ld_ratio: np.ndarray
    n_price: int
    n_verb: int
    n_control: int

    @property
    def pk_verb(self) -> np.ndarray:
        return self.mass_verb / self.n_verb

    @property
    def pk_control(self) -> np.ndarray:
        return self.mass_control / self.n_control

    @property
    def ld_pk_verb(self) -> np.ndarray:
        return self.ld_mass_verb / self.n_verb

    @property
    def ld_pk_control(self) -> np.ndarray:
        return self.ld_mass_control / self.n_control


def head_masses(attentions: list, tags: np.ndarray, msg: np.ndarray, eps: float = 1e-9) -> HeadMasses | None:
    """``attentions``: per layer a (heads, T, T) array of weights (rows sum to 1). None if no price/verb/control."""
    q = np.where(tags == 1)[0]
    verb, ctrl = tags == 2, tags == 3
    if len(q) == 0 or not verb.any() or not ctrl.any():
        return None
    L = len(attentions)
    H = attentions[0].shape[0]
    out = {k: np.zeros((L, H)) for k in ("mv", "mc", "lmv", "lmc")}
    for layer, A in enumerate(attentions):
        rows = np.asarray(A, dtype=np.float64)[:, q, :]  # (H, nq, T)
        far = msg[None, :] < msg[q][:, None]  # (nq, T): keys in an earlier message
        out["mv"][layer] = (rows * verb).sum(-1).mean(-1)
        out["mc"][layer] = (rows * ctrl).sum(-1).mean(-1)
        out["lmv"][layer] = (rows * (verb & far)).sum(-1).mean(-1)
        out["lmc"][layer] = (rows * (ctrl & far)).sum(-1).mean(-1)
    nv, nc = int(verb.sum()), int(ctrl.sum())
    ratio = (out["mv"] / nv) / (out["mc"] / nc + eps)
    ld_ratio = (out["lmv"] / nv) / (out["lmc"] / nc + eps)
    return HeadMasses(out["mv"], out["mc"], ratio, out["lmv"], out["lmc"], ld_ratio, len(q), nv, nc)


def bootstrap_heads(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """values: (transcripts, layers, heads) -> mean, ci_low, ci_high over transcripts."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = values[idx].mean(axis=1)
    return values.mean(0), np.quantile(boots, 0.025, axis=0), np.quantile(boots, 0.975, axis=0)


def rank_heads(mean: np.ndarray) -> list[tuple[int, int]]:
    """(layer, head) by descending mean; ties by layer then head (deterministic)."""
    L, H = mean.shape
    return sorted(((la, h) for la in range(L) for h in range(H)), key=lambda lh: (-mean[lh], lh[0], lh[1]))


def transcript_texts(negotiations, tokenizer, max_chars: int = 6000) -> list[str]:
    """Each negotiation as the buyer's chat (template applied), as the agents saw it."""
    from agreemate_lib.negotiation.prompts import build_messages, system_prompt

    texts = []
    for n in negotiations:
        sc = n.scenario
        view = {"title": sc.get("title", ""), "description": sc.get("description", ""),
                "category": sc.get("category", ""), "listing_price": float(sc["listing_price"]),
                "target": float(sc["buyer_target"])}
        hist = [{"speaker": t.speaker, "action": t.action, "utterance": t.utterance, "price": t.price}
                for t in n.turns]
        opens = bool(hist) and hist[0]["speaker"] == "buyer"
        msgs = build_messages("buyer", system_prompt("buyer", view), hist, 15, opens)
        texts.append(tokenizer.apply_chat_template(msgs, tokenize=False)[:max_chars])
    return texts


def probe(model, tokenizer, texts: list[str], max_tokens: int = 1024) -> tuple[list[HeadMasses], list[dict]]:
    """Run the model with attentions on each text; masses per transcript (skipping ones without tags)."""
    import torch

    results, kept = [], []
    for i, text in enumerate(texts):
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, truncation=True,
                        max_length=max_tokens)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        tags = tag_tokens(text, offsets)
        msg = message_index(text, offsets)
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([enc["input_ids"]], device=model.device), output_attentions=True)
        if not out.attentions:
            raise RuntimeError("the model returned no attention weights: load it with attn_implementation='eager'")
        atts = [a[0].float().cpu().numpy() for a in out.attentions]
        hm = head_masses(atts, tags, msg)
        if hm is not None:
            results.append(hm)
            kept.append({"index": i, "tokens": len(offsets), "price_tokens": hm.n_price, "verb_tokens": hm.n_verb,
                         "control_tokens": hm.n_control})
    return results, kept


def ratio_of_means(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0, eps: float = 1e-12
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """num, den: (transcripts, layers, heads) -> ratio of means with a bootstrap CI over transcripts."""
    rng = np.random.default_rng(seed)
    n = num.shape[0]
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = num[idx].mean(1) / (den[idx].mean(1) + eps)
    return num.mean(0) / (den.mean(0) + eps), np.quantile(boots, 0.025, axis=0), np.quantile(boots, 0.975, axis=0)


def summarize_probe(results: list[HeadMasses], n_boot: int = 1000, seed: int = 0) -> dict:
    """Means and CIs per head for every quantity, plus the ranking by ratio."""
    out = {}
    for field in ("mass_verb", "mass_control", "ld_mass_verb", "ld_mass_control"):
        out[field] = bootstrap_heads(np.stack([getattr(r, field) for r in results]), n_boot, seed)
    for name, prefix in (("ratio", ""), ("ld_ratio", "ld_")):
        out[name] = ratio_of_means(np.stack([getattr(r, f"{prefix}pk_verb") for r in results]),
                                   np.stack([getattr(r, f"{prefix}pk_control") for r in results]), n_boot, seed)
    out["ranking"] = rank_heads(out["ratio"][0])
    return out
