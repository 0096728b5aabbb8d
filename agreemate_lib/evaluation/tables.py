"""Metric tables: per-negotiation rows from our transcripts or from AgreeMate CSVs, and grouped summaries."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from agreemate_lib.core.records import Negotiation, frame_to_negotiations
from agreemate_lib.evaluation.metrics import (
    act_divergence,
    aggregate,
    bootstrap_mean,
    metric_names,
    negotiation_metrics,
)
from agreemate_lib.evaluation.paper import detect_paper_variant, is_cot_pair, pair_from_filename, read_published_csv


def negotiation_table(negotiations: Sequence[Negotiation], mode: str = "corrected") -> pd.DataFrame:
    """One row per negotiation: ids, pair, CoT flags, outcome, anomaly counts and every metric. An ``error``
    negotiation (a backend failure ended it) keeps its row, with every metric NaN: it is counted, never scored."""
    rows = []
    mode_used = "paper" if mode.startswith("paper") else mode
    for n in negotiations:
        if n.outcome == "error":
            m = {name: float("nan") for name in metric_names()}
        else:
            m = negotiation_metrics(n.to_outcome(), mode_used)  # type: ignore[arg-type]
        s = n.summary_row()
        rows.append({
            "pair": f"{n.buyer_id}+{n.seller_id}",
            "buyer_id": n.buyer_id,
            "seller_id": n.seller_id,
            "scenario_id": s["scenario_id"],
            "negotiation_id": n.negotiation_id,
            "cot": bool(n.buyer_cot or n.seller_cot),
            "outcome": n.outcome,
            "accepted_price": n.accepted_price,
            "parse_failures": s["parse_failures"],
            "unknown_actions": s["unknown_actions"],
            "fallback_turns": s["fallback_turns"],
            "n_turns": s["n_turns"],
            "anomalies": len(n.anomalies),
            "error": n.error,
            "formula": mode_used,
            "actions": json.dumps([t.action for t in n.turns]),
        } | m)
    return pd.DataFrame(rows)


def published_table(path: str | Path, mode: str = "corrected", rows=None) -> pd.DataFrame:
    """One row per negotiation of an AgreeMate-format CSV. ``paper`` picks the file's code version itself.
    ``rows``: the file's rows (:func:`read_published_csv`) when the caller has read them already."""
    rows = rows if rows is not None else read_published_csv(path)
    used = detect_paper_variant(rows) if mode == "paper" else mode
    buyer, seller = pair_from_filename(Path(path).name)
    out = []
    for r in rows:
        m = negotiation_metrics(r.outcome_for(used), used)  # type: ignore[arg-type]
        out.append({
            "pair": Path(path).stem,
            "buyer_id": buyer,
            "seller_id": seller,
            "scenario_id": r.scenario_id,
            "negotiation_id": f"{Path(path).stem}:{r.row}",
            "cot": is_cot_pair(Path(path).name),
            "outcome": "accepted" if r.outcome.agreed else "no_deal",
            "accepted_price": r.outcome.accepted_price,
            "parse_failures": 0,
            "unknown_actions": r.n_unknown_actions,
            "fallback_turns": 0,
            "n_turns": len(r.raw_actions),
            "anomalies": int(r.accepted_without_price) + r.n_unknown_actions,
            "formula": used,
            "actions": json.dumps(list(r.outcome.actions)),
        } | m)
    return pd.DataFrame(out)


def load_table(paths: Iterable[str | Path], mode: str = "corrected") -> pd.DataFrame:
    """Per-negotiation metrics from CSV files (AgreeMate layout), parquet turn tables, or folders of either."""
    frames = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(p.glob("*.csv")) + sorted(p.rglob("*transcripts*.parquet"))
            if not files:
                raise FileNotFoundError(f"{p}: no *.csv or *transcripts*.parquet files inside")
            frames.append(load_table(files, mode))
        elif not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        elif p.suffix == ".csv":
            frames.append(published_table(p, mode))
        elif p.suffix == ".parquet":
            try:
                frames.append(negotiation_table(frame_to_negotiations(pd.read_parquet(p)), mode))
            except ValueError as exc:
                raise ValueError(f"{p}: {exc}") from None
        else:
            raise ValueError(f"{p}: expected a .csv (AgreeMate layout) or a .parquet transcript table")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def scored(table: pd.DataFrame) -> pd.DataFrame:
    """The negotiations that enter the metrics: all but those that ended in ``error`` (no reply from a backend)."""
    return table[table["outcome"] != "error"] if "outcome" in table else table


def summarize(table: pd.DataFrame, by: str | list[str] = "pair", n_boot: int = 2000, seed: int = 0,
              act_reference: dict[str, float] | None = None) -> pd.DataFrame:
    """Mean and bootstrap 95% CI of every metric per group, pooled over the negotiations that ended with a result.

    ``error`` negotiations (no reply from a backend) are left out of every metric: ``n`` counts the scored
    negotiations, ``n_error`` the others, ``error_rate`` = n_error / (n + n_error). With ``act_reference`` (an act
    distribution, e.g. :func:`~agreemate_lib.evaluation.human.human_act_distribution`) and an ``actions`` column,
    ``act_divergence`` is each group's JS divergence from it, with a CI over negotiations."""
    keys = [by] if isinstance(by, str) else by
    rows = []
    for key, g_all in table.groupby(keys, sort=True):
        errors = g_all["outcome"].eq("error") if "outcome" in g_all else pd.Series(False, index=g_all.index)
        g = g_all[~errors]
        agg = aggregate(g.to_dict("records"), n_boot=n_boot, seed=seed)
        label = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, label))
        row["n"] = int(agg.pop("n"))
        row["n_error"] = int(errors.sum())
        row["error_rate"] = float(errors.mean()) if len(g_all) else 0.0
        row["parse_failure_rate"] = float(g["parse_failures"].sum() / max(1, g["n_turns"].sum()))
        row["anomaly_rate"] = float((g["anomalies"] > 0).mean())
        if act_reference is not None and "actions" in g:
            est = act_divergence([json.loads(a) for a in g["actions"]], act_reference, n_boot=n_boot, seed=seed)
            row |= {"act_divergence": est.mean, "act_divergence_ci_low": est.low, "act_divergence_ci_high": est.high}
        rows.append(row | agg)
    return pd.DataFrame(rows)


def summarize_pairs_then_groups(table: pd.DataFrame, group_col: str = "cot", n_boot: int = 2000,
                                seed: int = 0) -> pd.DataFrame:
    """The paper's averaging: per-pair means first, then the mean of those means per group (CIs over pairs)."""
    pair_means = table.groupby("pair").agg({group_col: "first", **{m: "mean" for m in metric_names()}}).reset_index()
    rows = []
    for key, g in pair_means.groupby(group_col, sort=True):
        row = {group_col: key, "n": int(len(g))}
        for m in metric_names():
            est = bootstrap_mean(g[m].tolist(), n_boot=n_boot, seed=seed)
            row |= {m: est.mean, f"{m}_ci_low": est.low, f"{m}_ci_high": est.high, f"{m}_n": est.n}
        rows.append(row)
    return pd.DataFrame(rows)


def to_json_records(summary: pd.DataFrame, group_col: str) -> list[dict]:
    out = []
    for rec in summary.to_dict("records"):
        g = rec.pop(group_col)
        if group_col == "cot":
            g = "cot" if g else "no-cot"
        clean = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
        out.append({"group": g} | clean)
    return out


def with_ci(summary: pd.DataFrame, key: str) -> pd.DataFrame:
    """Each metric as "mean [low, high]" (95% bootstrap CI), beside the counts: tables a person reads."""
    out = summary[[key, "n", *[c for c in ("error_rate",) if c in summary]]].copy()
    for m in (*metric_names(), "act_divergence"):
        if m in summary:
            out[m] = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(v) else "" for v, lo, hi in
                      zip(summary[m], summary[f"{m}_ci_low"], summary[f"{m}_ci_high"])]
    return out
