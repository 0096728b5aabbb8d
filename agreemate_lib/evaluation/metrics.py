"""Negotiation metrics: per negotiation, and aggregated with bootstrap confidence intervals.

Formulas and edge cases are documented in ``docs/metrics.md``. Two formula modes:

- ``corrected`` (default): the paper's stated intent with its defects fixed.
- ``paper``: exactly what the published AgreeMate CSVs store, so their numbers can be reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from agreemate_lib.core.records import NegotiationOutcome

FormulaMode = Literal["corrected", "paper", "paper-signed", "paper-updated"]
#: ``paper``: the code behind the size/CoT runs (|Δprice| concession, |fairness|/T efficiency);
#: ``paper-signed``: the code behind the personality runs (signed Δprice, signed fairness/T).
#: ``paper-updated``: the code behind the ``*_updated.csv`` files (|Δprice| concession, signed fairness/T).
FORMULA_MODES: tuple[str, ...] = ("corrected", "paper", "paper-signed", "paper-updated")

NAN = float("nan")


def _clean_prices(prices: Iterable[float | None]) -> list[float | None]:
    out: list[float | None] = []
    for p in prices:
        if p is None or (isinstance(p, float) and math.isnan(p)) or p == -1:
            out.append(None)
        else:
            out.append(float(p))
    return out


@dataclass(frozen=True)
class MetricInputs:
    """What one metric function sees: the outcome, the formula mode, and the quantities every formula uses."""

    outcome: NegotiationOutcome
    mode: str
    prices: list[float | None]  # per turn, None where no price (the published runs' -1 and NaN included)
    n: int  # T: turns, the closing one included
    L: float
    B: float
    S: float
    p: float | None  # the accepted price, for a deal
    half_zone: float  # (S - B) / 2

    @property
    def paper(self) -> bool:
        return self.mode != "corrected"

    @property
    def bias(self) -> float:
        return ((self.S + self.B) / 2.0 - self.p) / self.half_zone if self.p is not None and self.half_zone > 0 \
            else NAN


@dataclass(frozen=True)
class Metric:
    """A registered metric: its function and everything derived from it (lists, range checks, docs table)."""

    name: str
    fn: Callable[[MetricInputs], float]
    formula: str
    #: Bounds every defined value obeys, whatever the negotiation ((lo, hi), None = unbounded): the range check.
    bounds: tuple[float | None, float | None]
    #: The range as documented (may say when tighter bounds hold).
    doc_range: str
    #: When the value is NaN.
    undefined: str
    #: "higher" / "lower" is better for the side or the study, "neutral" when neither.
    direction: Literal["higher", "lower", "neutral"] = "neutral"
    #: Formula modes whose formula differs from ``corrected`` (documented in docs/metrics.md).
    paper_formula: str = ""


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, formula: str, bounds: tuple[float | None, float | None] = (None, None),
                    doc_range: str = "", undefined: str = "never", direction: str = "neutral",
                    paper_formula: str = ""):
    """Register a per-negotiation metric (in report order). The function gets :class:`MetricInputs` and returns a
    float (NaN where undefined)."""
    def deco(fn: Callable[[MetricInputs], float]) -> Callable[[MetricInputs], float]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = Metric(name, fn, formula, bounds, doc_range, undefined, direction,  # type: ignore[arg-type]
                               paper_formula)
        return fn
    return deco


@register_metric("agreement_rate", formula="1 if a deal with a price, else 0", bounds=(0.0, 1.0), doc_range="{0, 1}",
                 direction="higher")
def agreement_rate(x: MetricInputs) -> float:
    return 1.0 if x.p is not None else 0.0


@register_metric("dialogue_length", formula="T", bounds=(1.0, None), doc_range="≥ 1")
def dialogue_length(x: MetricInputs) -> float:
    return float(x.n)


@register_metric("fairness", formula="1 − \\|bias\\| = 1 − \\|p − m\\| / ((S − B) / 2): the denominator is the zone "
                 "S − B (halved), never the midpoint", bounds=(None, 1.0), doc_range="≤ 1; [0, 1] when B ≤ p ≤ S",
                 undefined="no deal; S ≤ B", direction="higher")
def fairness(x: MetricInputs) -> float:
    return 1.0 - abs(x.bias)


@register_metric("aggressiveness", formula="(L − p) / L: the discount off the listing (negative when p > L)",
                 bounds=(None, 1.0), doc_range="≤ 1", undefined="no deal", paper_formula="\\|L − p\\| / L")
def aggressiveness(x: MetricInputs) -> float:
    if x.p is None or x.L <= 0:
        return NAN
    return abs(x.L - x.p) / x.L if x.paper else (x.L - x.p) / x.L


@register_metric("bias", formula="(m − p) / ((S − B) / 2); positive favours the buyer, 1 = deal at B, −1 = deal at S",
                 doc_range="[−1, 1] when B ≤ p ≤ S; outside when a deal falls outside the targets",
                 undefined="no deal; S ≤ B")
def bias(x: MetricInputs) -> float:
    return x.bias


@register_metric("bias_per_turn", formula="bias / T", undefined="no deal; S ≤ B")
def bias_per_turn(x: MetricInputs) -> float:
    return x.bias / x.n if x.n else NAN


@register_metric("concession_rate", formula="mean over each side's consecutive own offers of its move toward the "
                 "other side (buyer: p_new − p_old, seller: p_old − p_new), divided by S − B, so cars and chargers "
                 "compare", doc_range="≈ [−1, 1]", undefined="S ≤ B; no side named two prices",
                 paper_formula="Σ\\|p_k+1 − p_k\\| / n over both sides' priced turns, in dollars")
def concession_rate(x: MetricInputs) -> float:
    if not x.paper:
        return _corrected_concession(x.prices, x.outcome.speakers, x.B, x.S)
    signed = x.mode == "paper-signed"
    priced = [v for v in x.prices if v is not None]
    # one price: the size/CoT code stores blank, the personality code 0.0
    if len(priced) >= 2 or (signed and priced):
        steps = [(b - a) if signed else abs(b - a) for a, b in zip(priced, priced[1:])]
        return sum(steps) / len(priced)
    return NAN


@register_metric("relative_efficiency", formula="fairness / T (signed)", undefined="no deal; S ≤ B",
                 direction="higher", paper_formula="\\|fairness\\| / T")
def relative_efficiency(x: MetricInputs) -> float:
    if not x.n:
        return NAN
    f = fairness(x)
    return abs(f) / x.n if x.mode == "paper" else f / x.n


@register_metric("probing_ratio", formula="(number of `inquire` turns) / T", bounds=(0.0, 1.0), doc_range="[0, 1]")
def probing_ratio(x: MetricInputs) -> float:
    return sum(1 for a in x.outcome.actions if a == "inquire") / x.n if x.n else NAN


# --- Competence: what a haggler should never do, and how far it is from people ------------------------------------


@register_metric("deal_outside_limits", formula="1 if a deal at p < the seller's bottom line or p > L, else 0",
                 bounds=(0.0, 1.0), doc_range="{0, 1}", undefined="no deal; bottom line unknown", direction="lower")
def deal_outside_limits(x: MetricInputs) -> float:
    R = x.outcome.seller_bottom_line
    if x.p is None or R is None:
        return NAN
    return float(x.p < R - 1e-9 or x.p > x.L + 1e-9)


@register_metric("reneging_rate", formula="share of a side's consecutive own prices that move away from the other "
                 "side (a buyer lowering, a seller raising its price)", bounds=(0.0, 1.0), doc_range="[0, 1]",
                 undefined="no side named two prices; speakers unknown", direction="lower")
def reneging_rate(x: MetricInputs) -> float:
    if x.outcome.speakers is None:
        return NAN
    moves = price_moves(x.outcome.speakers, x.prices)
    return sum(away for _, away in moves) / len(moves) if moves else NAN


def price_moves(speakers: Sequence[str], prices: Sequence[float | None]) -> list[tuple[int, bool]]:
    """(turn index, moves away from the other side) for every turn whose price differs from its speaker's last one:
    away is a buyer lowering or a seller raising its own price (``reneging_rate``; the training data's
    ``reneging_turns``)."""
    last: dict[str, float] = {}
    out = []
    for k, (who, price) in enumerate(zip(speakers, prices)):
        if price is None:
            continue
        if who in last and price != last[who]:
            out.append((k, price < last[who] if who == "buyer" else price > last[who]))
        last[who] = price
    return out


def answered_prices(x: MetricInputs) -> list[float | None]:
    """Each turn's price field, except that an accept or reject without one answers the other side's last price: the
    price its words refer to ("Deal, $90 it is." accepts 90). Without speakers, the fields as they are."""
    sp, acts = x.outcome.speakers, x.outcome.actions
    if not sp or len(sp) != len(x.prices):
        return list(x.prices)
    out, last = [], {}
    for who, act, price in zip(sp, acts, x.prices):
        other = next((v for k, v in last.items() if k != who), None)
        out.append(other if price is None and act in ("accept", "reject") else price)
        if price is not None:
            last[who] = price
    return out


@register_metric("utterance_price_mismatch", formula="share of turns whose words name a price (within 0.1 L .. 3 L) "
                 "that is not the turn's price field (for an accept or reject without one: the other side's last "
                 "price, the one it answers)", bounds=(0.0, 1.0), doc_range="[0, 1]",
                 undefined="no turn names a price in its words; utterances unknown", direction="lower")
def utterance_price_mismatch(x: MetricInputs) -> float:
    said, bad = price_contradictions(x)
    return len(bad) / len(said) if said else NAN


def price_contradictions(x: MetricInputs) -> tuple[list[int], list[int]]:
    """(the turns whose words name a price within 0.1 L .. 3 L, those of them whose words contradict the price field
    or, for an accept or reject without one, the price it answers): ``utterance_price_mismatch`` turn by turn (the
    preference data of ``training/preference.py`` starts from the second list). No utterances: nothing."""
    from agreemate_lib.core.money import price_spans

    said: list[int] = []
    bad: list[int] = []
    if x.outcome.utterances is None:
        return said, bad
    for k, (utt, price) in enumerate(zip(x.outcome.utterances, answered_prices(x))):
        named = [s.value for s in price_spans(utt or "") if 0.1 * x.L <= s.value <= 3 * x.L]
        if not named:
            continue
        said.append(k)
        if price is None or all(abs(v - price) > max(0.01, 0.005 * price) for v in named):
            bad.append(k)
    return said, bad


def metric_inputs(o: NegotiationOutcome, mode: FormulaMode = "corrected") -> MetricInputs:
    """What every metric function of one negotiation sees."""
    if mode not in FORMULA_MODES:
        raise ValueError(f"formula mode must be one of {FORMULA_MODES}, got {mode!r}")
    L, B, S = float(o.listing_price), float(o.buyer_target), float(o.seller_target)
    p = o.accepted_price if (o.agreed and o.accepted_price is not None) else None
    return MetricInputs(o, mode, _clean_prices(o.prices), len(o.actions), L, B, S, p, (S - B) / 2.0)


@register_metric("accepted_unoffered", formula="1 if the deal's price is none of the prices the other side (the "
                 "one that did not close) named, else 0", bounds=(0.0, 1.0), doc_range="{0, 1}",
                 undefined="no deal; speakers unknown; the other side has no price on record (nothing to compare "
                 "with: the published runs' unparsed prices)", direction="lower")
def accepted_unoffered(x: MetricInputs) -> float:
    sp = x.outcome.speakers
    if x.p is None or not sp:
        return NAN
    closer = sp[-1]
    offered = [p for who, p in zip(sp, x.prices) if who != closer and p is not None]
    # Our runner makes a deal only at the other side's last price (an accept with none is no deal), so our own runs
    # score 0 by construction; the published runs take the price from the model's words. With no price of the other
    # side on record (their parser's -1), whether it was offered is unknown: undefined, not a violation.
    if not offered:
        return NAN
    return float(not any(abs(p - x.p) < 0.005 for p in offered))


@register_metric("opening_offer_share", formula="the buyer's first price / L", bounds=(0.0, None),
                 doc_range="≥ 0 (1 = opens at the listing price)", undefined="the buyer named no price; speakers "
                 "unknown")
def opening_offer_share(x: MetricInputs) -> float:
    sp = x.outcome.speakers
    if not sp:
        return NAN
    first = next((p for who, p in zip(sp, x.prices) if who == "buyer" and p is not None), None)
    return first / x.L if first is not None and x.L > 0 else NAN


def metric_names() -> tuple[str, ...]:
    """Every registered metric, in report order (registration order)."""
    return tuple(METRICS)


#: The metrics registered by this module (use :func:`metric_names` to include metrics registered later).
METRIC_NAMES: tuple[str, ...] = metric_names()


def negotiation_metrics(o: NegotiationOutcome, mode: FormulaMode = "corrected") -> dict[str, float]:
    """All registered metrics of one negotiation. Undefined values (no deal, S = B, no prices) are NaN."""
    x = metric_inputs(o, mode)
    return {name: float(m.fn(x)) for name, m in METRICS.items()}


def metrics_doc_table() -> str:
    """The per-negotiation metrics table of docs/metrics.md, generated from the registry."""
    lines = ["| metric | formula | range | undefined (NaN) when |", "|---|---|---|---|"]
    for m in METRICS.values():
        lines.append(f"| {m.name} | {m.formula} | {m.doc_range} | {m.undefined} |")
    return "\n".join(lines)


def _corrected_concession(prices: list[float | None], speakers: Sequence[str] | None, B: float, S: float) -> float:
    """Mean move of each side toward the other between its own consecutive offers, as a share of S - B."""
    if speakers is None or S <= B:
        return NAN
    moves: list[float] = []
    last: dict[str, float] = {}
    for sp, pr in zip(speakers, prices):
        if pr is None:
            continue
        if sp in last:
            delta = pr - last[sp]
            moves.append(delta if sp == "buyer" else -delta)  # buyer conceding raises, seller conceding lowers
        last[sp] = pr
    if not moves:
        return NAN
    return float(np.mean(moves)) / (S - B)


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> Estimate:
    """Mean of the finite values with a percentile bootstrap CI (NaNs dropped; n counts the finite values)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return Estimate(NAN, NAN, NAN, 0)
    if x.size == 1:
        return Estimate(float(x[0]), NAN, NAN, 1)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    a = (1 - level) / 2
    return Estimate(float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)), int(x.size))


def aggregate(rows: Sequence[dict[str, float]], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean and 95% CI of every metric over negotiations: keys ``m``, ``m_ci_low``, ``m_ci_high``, ``m_n``; plus n."""
    out: dict[str, float] = {"n": float(len(rows))}
    for name in METRICS:
        est = bootstrap_mean([r.get(name, NAN) for r in rows], n_boot=n_boot, seed=seed)
        out[name] = est.mean
        out[f"{name}_ci_low"] = est.low
        out[f"{name}_ci_high"] = est.high
        out[f"{name}_n"] = float(est.n)
    return out


# --- Distance from human behaviour: the dialogue-act distribution ----------------------------------------------------


def act_distribution(action_lists: Iterable[Sequence[str]]) -> dict[str, float]:
    """Share of each act over all turns of the negotiations (``unknown`` left out: it is no behaviour)."""
    from collections import Counter

    c = Counter(a for acts in action_lists for a in acts if a != "unknown")
    total = sum(c.values())
    return {a: n / total for a, n in sorted(c.items())} if total else {}


def js_divergence(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen-Shannon divergence in bits, in [0, 1]: 0 = the same act distribution, 1 = disjoint."""
    if not p or not q:
        return NAN
    keys = set(p) | set(q)
    m = {k: (p.get(k, 0.0) + q.get(k, 0.0)) / 2 for k in keys}

    def kl(a: dict[str, float]) -> float:
        return sum(v * math.log2(v / m[k]) for k, v in a.items() if v > 0)

    return 0.5 * kl(p) + 0.5 * kl(q)


def act_divergence(action_lists: Sequence[Sequence[str]], reference: dict[str, float], n_boot: int = 2000,
                   seed: int = 0) -> Estimate:
    """JS divergence of a group's pooled act distribution from ``reference`` (the human dialogues'), with a
    bootstrap 95% CI over negotiations."""
    n = len(action_lists)
    if not n or not reference:
        return Estimate(NAN, NAN, NAN, n)
    point = js_divergence(act_distribution(action_lists), reference)
    rng = np.random.default_rng(seed)
    boots = [js_divergence(act_distribution([action_lists[i] for i in rng.integers(0, n, n)]), reference)
             for _ in range(n_boot)]
    return Estimate(point, float(np.nanpercentile(boots, 2.5)), float(np.nanpercentile(boots, 97.5)), n)
