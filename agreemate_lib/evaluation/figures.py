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


def pair_heatmap(table: pd.DataFrame, metric: str):
    """Buyer x seller heatmap of a metric's mean over each pair's negotiations."""
    alt = _alt()
    agg = table.groupby(["buyer_id", "seller_id"], as_index=False).agg(value=(metric, "mean"), n=(metric, "count"))
    base = alt.Chart(agg).encode(
        x=alt.X("seller_id:N", title="seller"), y=alt.Y("buyer_id:N", title="buyer"))
    rect = base.mark_rect().encode(color=alt.Color("value:Q", title=metric, scale=alt.Scale(scheme="viridis")),
                                   tooltip=["buyer_id", "seller_id", alt.Tooltip("value:Q", format=".3f"), "n"])
    text = base.mark_text(fontSize=10).encode(text=alt.Text("value:Q", format=".2f"),
                                              color=alt.value("white"))
    return (rect + text).properties(title=f"{metric} by buyer x seller", width=max(160, 40 * agg.seller_id.nunique()),
                                    height=max(160, 30 * agg.buyer_id.nunique()))


def price_progression_frame(turns: pd.DataFrame) -> pd.DataFrame:
    """Priced turns with the price normalised to the bargaining zone: 0 = buyer target, 1 = seller target."""
    t = turns[turns["price"].notna()].copy()
    zone = (t["seller_target"] - t["buyer_target"]).where(lambda z: z > 0)
    t["normalized_price"] = (t["price"] - t["buyer_target"]) / zone
    t["pair"] = t["buyer_id"] + "+" + t["seller_id"]
    return t[t["normalized_price"].between(-2, 3)][["pair", "turn_index", "speaker", "normalized_price"]]


def price_progression(turns: pd.DataFrame):
    """Normalised price per turn: a heatmap of counts and mean trend lines per pair."""
    alt = _alt()
    t = price_progression_frame(turns)
    heat = alt.Chart(t).mark_rect().encode(
        x=alt.X("turn_index:O", title="turn"),
        y=alt.Y("normalized_price:Q", bin=alt.Bin(maxbins=20), title="price (0 = buyer target, 1 = seller target)"),
        color=alt.Color("count():Q", scale=alt.Scale(scheme="blues")),
    ).properties(width=320, height=220, title="price per turn (all pairs)")
    lines = alt.Chart(t).mark_line(point=True).encode(
        x=alt.X("turn_index:Q", title="turn"), y=alt.Y("mean(normalized_price):Q", title="mean normalised price"),
        color=alt.Color("pair:N"),
    ).properties(width=320, height=220, title="mean price per turn, by pair")
    return alt.hconcat(heat, lines)


def action_distribution(turns: pd.DataFrame):
    """Share of each dialogue act per agent and role."""
    alt = _alt()
    t = turns.copy()
    t["agent"] = t.apply(lambda r: r["buyer_id"] if r["speaker"] == "buyer" else r["seller_id"], axis=1)
    t["agent_role"] = t["agent"] + " (" + t["speaker"] + ")"
    return alt.Chart(t).mark_bar().encode(
        y=alt.Y("agent_role:N", title=None),
        x=alt.X("count():Q", stack="normalize", title="share of turns"),
        color=alt.Color("action:N", scale=alt.Scale(scheme="tableau20")),
        tooltip=["agent_role", "action", "count()"],
    ).properties(width=360, title="dialogue acts per agent and role")


def length_distribution(table: pd.DataFrame):
    """Distribution of dialogue lengths per pair."""
    alt = _alt()
    return alt.Chart(table).mark_bar(opacity=0.8).encode(
        x=alt.X("dialogue_length:O", title="turns"), y=alt.Y("count():Q", title="negotiations"),
        color="pair:N", row=alt.Row("pair:N", title=None),
    ).properties(width=320, height=60, title="dialogue length per pair")


#: Competence metrics drawn per pair (what a haggler should never do, and how close it opens to people).
COMPETENCE_METRICS = ("deal_outside_limits", "reneging_rate", "utterance_price_mismatch", "accepted_unoffered",
                      "opening_offer_share")


def competence_frame(table: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Per pair and competence metric: the mean and its bootstrap 95% CI over the pair's negotiations."""
    from agreemate_lib.evaluation.metrics import bootstrap_mean

    t = table[table["outcome"] != "error"] if "outcome" in table else table
    rows = []
    for pair, g in t.groupby("pair", sort=True):
        for m in COMPETENCE_METRICS:
            if m in g:
                e = bootstrap_mean(g[m].tolist(), n_boot=n_boot)
                rows.append({"pair": pair, "metric": m, "mean": e.mean, "low": e.low, "high": e.high, "n": e.n})
    return pd.DataFrame(rows).dropna(subset=["mean"])


def competence(table: pd.DataFrame):
    """Competence per pair: means with 95% CIs, one panel per metric (the human dialogues included as a pair)."""
    alt = _alt()
    df = competence_frame(table)
    base = alt.Chart(df).encode(y=alt.Y("pair:N", title=None))
    points = base.mark_point(filled=True).encode(x=alt.X("mean:Q", title=None), color="pair:N",
                                                 tooltip=["pair", "metric", "mean", "low", "high", "n"])
    bars = base.mark_rule().encode(x="low:Q", x2="high:Q", color="pair:N")
    return alt.layer(bars, points, data=df).properties(width=220, height=alt.Step(14)).facet(
        column=alt.Column("metric:N", title=None)).resolve_scale(x="independent").properties(
        title="competence per pair (mean, 95% CI)")


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
