"""Negotiation metrics: per negotiation, and aggregated with bootstrap confidence intervals.

Formulas and edge cases are documented in ``docs/metrics.md``. Two formula modes:

- ``corrected`` (default): the paper's stated intent with its defects fixed.
- ``paper``: exactly what the published AgreeMate CSVs store, so their numbers can be reproduced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np

FormulaMode = Literal["corrected", "paper", "paper-signed"]
#: ``paper``: the code behind the size/CoT runs (|Δprice| concession, |fairness|/T efficiency);
#: ``paper-signed``: the code behind the personality runs (signed Δprice, signed fairness/T).
FORMULA_MODES: tuple[str, ...] = ("corrected", "paper", "paper-signed")

#: Metric names in report order.
METRIC_NAMES: tuple[str, ...] = (
    "agreement_rate",
    "dialogue_length",
    "fairness",
    "aggressiveness",
    "bias",
    "bias_per_turn",
    "concession_rate",
    "relative_efficiency",
    "probing_ratio",
)

NAN = float("nan")


@dataclass(frozen=True)
class NegotiationOutcome:
    """What the metrics need from one negotiation."""

    listing_price: float
    buyer_target: float
    seller_target: float
    agreed: bool
    accepted_price: float | None
    actions: Sequence[str]
    prices: Sequence[float | None]  # one per turn; None where the turn named no price
    speakers: Sequence[str] | None = None  # "buyer"/"seller" per turn; needed by the corrected concession rate


def _clean_prices(prices: Iterable[float | None]) -> list[float | None]:
    out: list[float | None] = []
    for p in prices:
        if p is None or (isinstance(p, float) and math.isnan(p)) or p == -1:
            out.append(None)
        else:
            out.append(float(p))
    return out


def negotiation_metrics(o: NegotiationOutcome, mode: FormulaMode = "corrected") -> dict[str, float]:
    """All metrics of one negotiation. Undefined values (no deal, S = B, no prices) are NaN."""
    if mode not in FORMULA_MODES:
        raise ValueError(f"formula mode must be one of {FORMULA_MODES}, got {mode!r}")
    n = len(o.actions)
    prices = _clean_prices(o.prices)
    L, B, S = float(o.listing_price), float(o.buyer_target), float(o.seller_target)
    p = o.accepted_price if (o.agreed and o.accepted_price is not None) else None
    half_zone = (S - B) / 2.0
    out = {name: NAN for name in METRIC_NAMES}
    out["agreement_rate"] = 1.0 if p is not None else 0.0
    out["dialogue_length"] = float(n)
    out["probing_ratio"] = sum(1 for a in o.actions if a == "inquire") / n if n else NAN

    paper = mode != "corrected"
    if p is not None:
        if L > 0:
            out["aggressiveness"] = abs(L - p) / L if paper else (L - p) / L
        if half_zone > 0:
            bias = ((S + B) / 2.0 - p) / half_zone
            out["bias"] = bias
            out["fairness"] = 1.0 - abs(bias)
            if n:
                out["bias_per_turn"] = bias / n
                out["relative_efficiency"] = out["fairness"] / n

    if paper:
        signed = mode == "paper-signed"
        priced = [x for x in prices if x is not None]
        # one price: the size/CoT code stores blank, the personality code 0.0
        if len(priced) >= 2 or (signed and priced):
            steps = [(b - a) if signed else abs(b - a) for a, b in zip(priced, priced[1:])]
            out["concession_rate"] = sum(steps) / len(priced)
        if p is not None and half_zone > 0 and n and not signed:
            out["relative_efficiency"] = abs(out["fairness"]) / n
    else:
        out["concession_rate"] = _corrected_concession(prices, o.speakers, B, S)
    return out


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
    for name in METRIC_NAMES:
        est = bootstrap_mean([r.get(name, NAN) for r in rows], n_boot=n_boot, seed=seed)
        out[name] = est.mean
        out[f"{name}_ci_low"] = est.low
        out[f"{name}_ci_high"] = est.high
        out[f"{name}_n"] = float(est.n)
    return out
