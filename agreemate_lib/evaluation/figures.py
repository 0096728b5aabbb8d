"""The paper's figures with Altair: each saved as a Vega-Lite spec (JSON), standalone HTML and PNG (vl-convert)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

HEATMAP_METRICS = ("agreement_rate", "bias", "fairness", "aggressiveness", "dialogue_length")


def _alt():
    import altair as alt

    alt.data_transformers.disable_max_rows()
    return alt


def cell_estimates(table: pd.DataFrame, metric: str, keys: list[str], n_boot: int = 1000) -> pd.DataFrame:
    """Mean and bootstrap 95% CI of a metric per group of ``keys``, over the negotiations that ended with a result."""
    from agreemate_lib.evaluation.metrics import bootstrap_mean
    from agreemate_lib.evaluation.tables import scored

    t = scored(table)
    rows = []
    for key, g in t.groupby(keys, sort=False):
        e = bootstrap_mean(g[metric].tolist(), n_boot=n_boot)
        rows.append(dict(zip(keys, key if isinstance(key, tuple) else (key,)))
                    | {"value": e.mean, "low": e.low, "high": e.high, "n": e.n})
    return pd.DataFrame(rows)


def pair_heatmap(table: pd.DataFrame, metric: str, order: list[str] | None = None, n_boot: int = 1000):
    """Buyer x seller heatmap of a metric's mean over each pair's negotiations, the 95% bootstrap CI in each cell's
    tooltip and under its mean. ``order``: the agents' order on both axes (default: sorted)."""
    alt = _alt()
    agg = cell_estimates(table, metric, ["buyer_id", "seller_id"], n_boot=n_boot)
    agg["ci"] = [f"[{lo:.2f}, {hi:.2f}]" if pd.notna(lo) else "" for lo, hi in zip(agg["low"], agg["high"])]
    sort_b = [a for a in order if a in set(agg.buyer_id)] if order else "ascending"
    sort_s = [a for a in order if a in set(agg.seller_id)] if order else "ascending"
    base = alt.Chart(agg).encode(
        x=alt.X("seller_id:N", title="seller", sort=sort_s), y=alt.Y("buyer_id:N", title="buyer", sort=sort_b))
    rect = base.mark_rect().encode(color=alt.Color("value:Q", title=metric, scale=alt.Scale(scheme="viridis")),
                                   tooltip=["buyer_id", "seller_id", alt.Tooltip("value:Q", format=".3f"),
                                            alt.Tooltip("low:Q", format=".3f", title="CI low"),
                                            alt.Tooltip("high:Q", format=".3f", title="CI high"), "n"])
    text = base.mark_text(fontSize=10, dy=-5).encode(text=alt.Text("value:Q", format=".2f"), color=alt.value("white"))
    ci = base.mark_text(fontSize=7, dy=7).encode(text="ci:N", color=alt.value("white"))
    return (rect + text + ci).properties(title=f"{metric} by buyer x seller (mean, 95% CI)",
                                         width=max(160, 62 * agg.seller_id.nunique()),
                                         height=max(160, 34 * agg.buyer_id.nunique()))


def group_metrics(table: pd.DataFrame, group: str, metrics: tuple[str, ...] | list[str],
                  reference: dict[str, float] | None = None, order: list[str] | None = None,
                  title: str = "", n_boot: int = 1000):
    """Per group and metric: the mean with its 95% bootstrap CI over negotiations, one panel per metric; rows of
    ``source`` (the paper's runs, ours) side by side in each group; ``reference`` (e.g. the human dialogues' means)
    drawn as a dashed line in each panel."""
    alt = _alt()
    t = table if "source" in table else table.assign(source="")
    frames = [cell_estimates(t, m, [group, "source"], n_boot=n_boot).assign(metric=m) for m in metrics]
    df = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    sort = [g for g in order if g in set(df[group])] if order else "ascending"
    y = alt.Y(f"{group}:N", title=None, sort=sort)
    base = alt.Chart().encode(y=y, yOffset="source:N", color=alt.Color("source:N", title="source"))
    layers = [base.mark_rule().encode(x=alt.X("low:Q", title=None), x2="high:Q"),
              base.mark_point(filled=True, size=50).encode(
                  x="value:Q", tooltip=[group, "source", "metric", alt.Tooltip("value:Q", format=".3f"),
                                        alt.Tooltip("low:Q", format=".3f"), alt.Tooltip("high:Q", format=".3f"), "n"])]
    if reference:
        ref = pd.DataFrame([{"metric": m, "reference": v} for m, v in reference.items() if m in metrics])
        df = df.merge(ref, on="metric", how="left")
        layers.append(alt.Chart().mark_rule(strokeDash=[4, 3], color="black").encode(x="mean(reference):Q"))
    return alt.layer(*layers, data=df).properties(width=190, height=alt.Step(12)).facet(
        column=alt.Column("metric:N", title=None, sort=list(metrics))).resolve_scale(x="independent").properties(
        title=title or f"metrics by {group} (mean, 95% CI" + ("; dashed: human dialogues)" if reference else ")"))


def price_progression_frame(turns: pd.DataFrame, by: str = "pair") -> pd.DataFrame:
    """Priced turns with the price normalised to the bargaining zone: 0 = buyer target, 1 = seller target."""
    t = turns[turns["price"].notna()].copy()
    zone = (t["seller_target"] - t["buyer_target"]).where(lambda z: z > 0)
    t["normalized_price"] = (t["price"] - t["buyer_target"]) / zone
    if by == "pair" and "pair" not in t:
        t["pair"] = t["buyer_id"] + "+" + t["seller_id"]
    return t[t["normalized_price"].between(-2, 3)][[by, "turn_index", "speaker", "normalized_price"]]


def price_progression(turns: pd.DataFrame, by: str = "pair"):
    """Normalised price per turn: a heatmap of counts and mean trend lines per ``by`` group (default: pair)."""
    alt = _alt()
    t = price_progression_frame(turns, by)
    heat = alt.Chart(t).mark_rect().encode(
        x=alt.X("turn_index:O", title="turn"),
        y=alt.Y("normalized_price:Q", bin=alt.Bin(maxbins=20), title="price (0 = buyer target, 1 = seller target)"),
        color=alt.Color("count():Q", scale=alt.Scale(scheme="blues")),
    ).properties(width=320, height=220, title="price per turn (all)")
    lines = alt.Chart(t).mark_line(point=True).encode(
        x=alt.X("turn_index:Q", title="turn"), y=alt.Y("mean(normalized_price):Q", title="mean normalised price"),
        color=alt.Color(f"{by}:N"),
    ).properties(width=320, height=220, title=f"mean price per turn, by {by}")
    return alt.hconcat(heat, lines)


def action_distribution(turns: pd.DataFrame, by: str | None = None):
    """Share of each dialogue act per agent and role (or per ``by`` group and role)."""
    alt = _alt()
    t = turns.copy()
    if by is None:
        t["agent"] = t.apply(lambda r: r["buyer_id"] if r["speaker"] == "buyer" else r["seller_id"], axis=1)
        t["agent_role"] = t["agent"] + " (" + t["speaker"] + ")"
    else:
        t["agent_role"] = t[by].astype(str) + " (" + t["speaker"] + ")"
    return alt.Chart(t).mark_bar().encode(
        y=alt.Y("agent_role:N", title=None),
        x=alt.X("count():Q", stack="normalize", title="share of turns"),
        color=alt.Color("action:N", scale=alt.Scale(scheme="tableau20")),
        tooltip=["agent_role", "action", "count()"],
    ).properties(width=360, title="dialogue acts per " + ("agent" if by is None else by) + " and role")


def length_distribution(table: pd.DataFrame, by: str = "pair"):
    """Distribution of dialogue lengths per pair (or per ``by`` group)."""
    alt = _alt()
    return alt.Chart(table).mark_bar(opacity=0.8).encode(
        x=alt.X("dialogue_length:O", title="turns"), y=alt.Y("count():Q", title="negotiations"),
        color=f"{by}:N", row=alt.Row(f"{by}:N", title=None),
    ).properties(width=320, height=60, title=f"dialogue length per {by}")


#: Competence metrics drawn per pair (what a haggler should never do, and how close it opens to people).
COMPETENCE_METRICS = ("deal_outside_limits", "reneging_rate", "utterance_price_mismatch", "accepted_unoffered",
                      "opening_offer_share")


def competence(table: pd.DataFrame):
    """Competence per pair: means with 95% CIs, one panel per metric (the human dialogues included as a pair)."""
    return group_metrics(table, "pair", COMPETENCE_METRICS, title="competence per pair (mean, 95% CI)")


def save_chart(chart, out_dir: str | Path, name: str) -> dict[str, Path]:
    """Write ``name.vl.json``, ``name.html`` and ``name.png``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = chart.to_dict()
    paths = {"spec": out / f"{name}.vl.json", "html": out / f"{name}.html", "png": out / f"{name}.png"}
    paths["spec"].write_text(json.dumps(spec))
    chart.save(str(paths["html"]), inline=True) if _inline_ok() else chart.save(str(paths["html"]))
    import vl_convert as vlc

    paths["png"].write_bytes(vlc.vegalite_to_png(spec, scale=1.5))
    return paths


def _inline_ok() -> bool:
    """Altair can inline the Vega JS into HTML (no network at view time) when vl-convert is present."""
    try:
        import vl_convert  # noqa: F401

        return True
    except ImportError:
        return False


def training_curves(curves: pd.DataFrame):
    """Raw and EMA training loss, validation loss, learning rate per layer group, gradient norm, throughput."""
    alt = _alt()
    c = curves.copy()
    loss = c.melt(id_vars=["step", "role"], value_vars=["loss", "loss_ema", "validation_loss"], var_name="series",
                  value_name="value").dropna()
    lr_cols = [x for x in c.columns if x.startswith("lr_layer_")]
    lrs = c.melt(id_vars=["step", "role"], value_vars=lr_cols, var_name="group", value_name="lr")
    lrs["layer"] = lrs["group"].str.removeprefix("lr_layer_").astype(int)
    w = 260
    p1 = alt.Chart(loss).mark_line(point=True).encode(x="step:Q", y=alt.Y("value:Q", title="loss"),
                                                      color="series:N", strokeDash="role:N"
                                                      ).properties(width=w, height=180, title="loss (raw, EMA, val)")
    p2 = alt.Chart(lrs).mark_line().encode(x="step:Q", y=alt.Y("lr:Q", title="learning rate"),
                                           color=alt.Color("layer:Q", scale=alt.Scale(scheme="viridis")),
                                           detail="group:N").properties(width=w, height=180,
                                                                        title="learning rate per layer (cyclic)")
    p3 = alt.Chart(c).mark_line(point=True).encode(x="step:Q", y="grad_norm:Q", color="role:N").properties(
        width=w, height=180, title="gradient norm")
    p4 = alt.Chart(c).mark_line(point=True).encode(x="step:Q", y=alt.Y("tokens_per_s:Q", title="tokens/s"),
                                                   color="role:N").properties(width=w, height=180,
                                                                              title="throughput")
    return alt.vconcat(alt.hconcat(p1, p2), alt.hconcat(p3, p4))


def head_heatmap(df: pd.DataFrame, value: str, title: str):
    """Layer x head heatmap, one panel per variant."""
    alt = _alt()
    return alt.Chart(df).mark_rect().encode(
        x=alt.X("head:O"), y=alt.Y("layer:O", sort="descending"),
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="redblue", domainMid=0 if value == "difference" else 1)),
        tooltip=["variant", "layer", "head", alt.Tooltip(f"{value}:Q", format=".3f")],
    ).properties(width=150, height=300).facet(column="variant:N").properties(title=title)


def token_attention(df: pd.DataFrame):
    """Tokens as rows, one column per head, colour = attention weight from the query (a price token)."""
    alt = _alt()
    base = alt.Chart(df).encode(y=alt.Y("position:O", axis=alt.Axis(labels=False, title="token")),
                                x=alt.X("head:N", title=None))
    rect = base.mark_rect().encode(color=alt.Color("weight:Q", scale=alt.Scale(scheme="oranges")),
                                   tooltip=["token", "tag", "weight"])
    labels = alt.Chart(df[df["head"] == df["head"].iloc[0]]).mark_text(align="right", dx=-4, fontSize=8).encode(
        y=alt.Y("position:O", axis=None), text="token:N",
        color=alt.Color("tag:N", scale=alt.Scale(domain=["other", "price", "verb", "control"],
                                                 range=["#555", "#d62728", "#1f77b4", "#2ca02c"])))
    return alt.hconcat(labels.properties(width=90), rect.properties(width=180)).properties(
        title="attention from the last price token, top heads")
