"""Study-level evaluation: the paper's Table 3, grouped tables, paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agreemate_lib.evaluation.tables import published_table, scored, summarize, summarize_pairs_then_groups

SIZES = ("3B", "8B", "70B")
TABLE3_METRICS = ("aggressiveness", "bias", "dialogue_length", "fairness", "concession_rate", "probing_ratio",
                  "relative_efficiency")
#: The paper's Table 3 (with CoT, without CoT).
PAPER_TABLE3 = {
    True: {"aggressiveness": 0.2107, "bias": 1.0813, "dialogue_length": 10.6115, "fairness": -0.4385,
           "concession_rate": 184.4005, "probing_ratio": 0.0197, "relative_efficiency": 0.1406},
    False: {"aggressiveness": 0.1333, "bias": 0.1671, "dialogue_length": 11.5667, "fairness": 0.3021,
            "concession_rate": 188.9073, "probing_ratio": 0.0137, "relative_efficiency": 0.0498},
}


def _file(buyer: str, seller: str) -> str:
    return f"baseline-{buyer}-buyer+baseline-{seller}-seller.csv"


def size_cot_files() -> list[str]:
    """All 36 size x CoT combinations (3B/8B/70B, with and without CoT, for buyer and seller)."""
    variants = [v for s in SIZES for v in (s, f"COT-{s}")]
    return [_file(b, s) for b in variants for s in variants]


def paper_table3_files() -> list[str]:
    """The paper's list: it named 70B-buyer + COT-8B-seller twice and left out COT-70B-buyer + COT-8B-seller.
    Pairs are averaged once each, so the duplicate collapses: 35 pairs (26 with CoT, 9 without)."""
    files = [f for f in size_cot_files() if f != _file("COT-70B", "COT-8B")]
    return files + [_file("70B", "COT-8B")]


def table3(directory: str | Path, files: Sequence[str], mode: str = "paper", n_boot: int = 2000) -> pd.DataFrame:
    """CoT vs no-CoT: per-pair means, then the mean of pair means per group, with bootstrap CIs over pairs."""
    from agreemate_lib.evaluation.tables import load_table

    d = Path(directory)
    table = load_table([d / f for f in dict.fromkeys(files)], mode)
    return summarize_pairs_then_groups(table, "cot", n_boot=n_boot)


def paired_comparison(table: pd.DataFrame, pair_a: str, pair_b: str, metric: str, n_perm: int = 10000,
                      seed: int = 0) -> dict:
    """Difference of a metric between two pairs on the same scenarios (matched by scenario id).

    Test: paired sign-flip permutation test of the mean difference (two-sided), with a bootstrap 95% CI.
    """
    a = table[table["pair"] == pair_a].groupby("scenario_id")[metric].mean()
    b = table[table["pair"] == pair_b].groupby("scenario_id")[metric].mean()
    d = (a - b).dropna()
    out = {"pair_a": pair_a, "pair_b": pair_b, "metric": metric, "n_matched": int(len(d)),
           "test": "paired sign-flip permutation test (two-sided)"}
    if len(d) < 2:
        return out | {"mean_difference": float(d.mean()) if len(d) else math.nan, "p_value": math.nan,
                      "ci_low": math.nan, "ci_high": math.nan}
    rng = np.random.default_rng(seed)
    x = d.to_numpy()
    obs = abs(x.mean())
    flips = rng.choice([-1.0, 1.0], size=(n_perm, x.size))
    p = (np.sum(np.abs((flips * x).mean(axis=1)) >= obs - 1e-12) + 1) / (n_perm + 1)
    boots = x[rng.integers(0, x.size, size=(2000, x.size))].mean(axis=1)
    return out | {"mean_difference": float(x.mean()), "p_value": float(p),
                  "ci_low": float(np.quantile(boots, 0.025)), "ci_high": float(np.quantile(boots, 0.975))}


def paired_against(table: pd.DataFrame, against: str, metrics: Sequence[str], n_perm: int = 10000) -> pd.DataFrame:
    """Every other pair of ``table`` against the pair ``against`` on each metric, scenario by scenario
    (:func:`paired_comparison`; one row per (pair, metric))."""
    t = scored(table)
    return pd.DataFrame([paired_comparison(t, pair, against, m, n_perm=n_perm)
                         for pair in sorted(set(t["pair"]) - {against}) for m in metrics])


def group_tables(table: pd.DataFrame, groups: dict[str, str], n_boot: int = 2000) -> pd.DataFrame:
    """Means per group both ways: over pairs (``by=pairs``) and pooled over negotiations (``by=negotiations``).

    ``groups`` maps pair -> group label (pairs missing from it are left out).
    """
    t = table[table["pair"].isin(groups)].copy()
    if t.empty:
        return pd.DataFrame()
    t["group"] = t["pair"].map(groups)
    pooled = summarize(t, "group", n_boot=n_boot).assign(by="negotiations")
    over_pairs = summarize_pairs_then_groups(t, "group", n_boot=n_boot).assign(by="pairs")
    return pd.concat([over_pairs, pooled], ignore_index=True)


#: The metrics the "does fine-tuning teach haggling?" comparison tests, pair against pair, per scenario.
FINETUNE_METRICS = ("agreement_rate", "dialogue_length", "fairness", "deal_outside_limits", "reneging_rate",
                    "utterance_price_mismatch", "opening_offer_share")

#: Our default pairs that the comparison reads (roster ids; see agents.yaml).
FINETUNE_PAIRS = {"fine-tuned": "smollm2-ft-buyer+smollm2-ft-seller",
                  "generalist": "smollm2-ft-generalist+smollm2-ft-generalist",
                  "preference": "smollm2-dpo-buyer+smollm2-dpo-seller",
                  "base": "smollm2+smollm2"}
PUBLISHED_FINETUNED = {"llama-3b fine-tuned (published)": "finetune-3B-buyer+finetune-3B-seller.csv",
                       "llama-3b generalist (published)": "generalist-3B-buyer+generalist-3B-seller.csv"}


def finetuning_comparison(table: pd.DataFrame, published_dir: str | Path | None = None,
                          pairs: dict[str, str] = FINETUNE_PAIRS, metrics: Sequence[str] = FINETUNE_METRICS,
                          n_perm: int = 10000) -> pd.DataFrame:
    """Paired per-scenario tests of each fine-tuned pair against base (and against the published Llama-3B fine-tuned
    rows on the same listings where the scenarios are the paper's): one row per (comparison, metric)."""
    frames = [scored(table)]
    others: dict[str, str] = {}
    if published_dir:
        for label, name in PUBLISHED_FINETUNED.items():
            p = Path(published_dir) / name
            if p.is_file():
                pub = published_table(p, "corrected")
                others[label] = str(pub["pair"].iloc[0])
                frames.append(pub)
    allt = pd.concat(frames, ignore_index=True)
    base = pairs.get("base")
    rows = []
    for label in ("fine-tuned", "generalist", "preference"):
        mine = pairs.get(label)
        if mine is None or mine not in set(allt["pair"]):
            continue
        against = ([("base", base)] if base in set(allt["pair"]) else []) + list(others.items())
        for what, other in against:
            for m in metrics:
                r = paired_comparison(allt, mine, other, m, n_perm=n_perm)
                rows.append({"ours": label, "against": what} | r)
    return pd.DataFrame(rows)
