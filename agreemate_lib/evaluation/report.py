"""A static one-page HTML report: tables, figures and a transcript browser. No server, no network needed."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from agreemate_lib.core.records import negotiations_to_frame
from agreemate_lib.evaluation import figures as F
from agreemate_lib.evaluation.comparisons import (
    PAPER_TABLE3,
    TABLE3_METRICS,
    paper_table3_files,
    size_cot_files,
    table3,
)
from agreemate_lib.evaluation.human import human_negotiations
from agreemate_lib.evaluation.tables import negotiation_table, summarize, with_ci


def load_study(results_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Our per-negotiation metrics and turn tables from an assets results folder (empty frames if none): the files
    the ``metrics_by_negotiation`` and ``negotiation_transcripts`` assets store."""
    r = Path(results_dir)
    table = pd.read_parquet(r / "metrics_by_negotiation.parquet") if (r / "metrics_by_negotiation.parquet").is_file() \
        else pd.DataFrame()
    tdir = r / "negotiation_transcripts"
    files = sorted(tdir.glob("buyer=*/seller=*.parquet")) if tdir.is_dir() else []
    turns = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()
    return table, turns


def figure_charts(table: pd.DataFrame, turns: pd.DataFrame) -> dict:
    """Every figure of the report as an Altair chart, by name."""
    charts = {f"heatmap_{m}": F.pair_heatmap(table, m) for m in F.HEATMAP_METRICS}
    if len(turns):
        charts["price_progression"] = F.price_progression(turns)
        charts["action_distribution"] = F.action_distribution(turns)
    charts["length_distribution"] = F.length_distribution(table)
    charts["competence"] = F.competence(table)
    return charts


def _img(path: Path) -> str:
    return f'<img alt="{path.stem}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'


def _table_html(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df.columns]
    return df[cols].to_html(index=False, float_format=lambda x: f"{x:.4f}", na_rep="", border=0, classes="t")


def build_report(out_dir: str | Path, table: pd.DataFrame, turns: pd.DataFrame,
                 published_dir: str | Path | None = None, human_source: str | None = None,
                 include_human: bool = True, n_boot: int = 2000) -> Path:
    """The static HTML report from our per-negotiation metrics (``table``) and turns."""
    out = Path(out_dir)
    figdir = out / "figures"
    if include_human:
        humans = human_negotiations("validation", human_source)
        table = pd.concat([table, negotiation_table(humans)], ignore_index=True)
        turns = pd.concat([turns, negotiations_to_frame(humans)], ignore_index=True)
    sections = []
    summary = None
    if len(table):
        from agreemate_lib.evaluation.human import human_act_distribution

        summary = summarize(table, "pair", n_boot=n_boot, act_reference=human_act_distribution("validation",
                                                                                               human_source))
        sections.append(("Metrics per pair (mean [95% bootstrap CI])",
                         with_ci(summary, "pair").to_html(index=False, border=0, classes="t")))
        for name, chart in figure_charts(table, turns).items():
            paths = F.save_chart(chart, figdir, name)
            sections.append((name.replace("_", " "), _img(paths["png"]) +
                             f'<p><a href="figures/{name}.html">interactive</a></p>'))
    ft = finetuning_section(table, summary if len(table) else None, published_dir)
    if ft:
        sections.append(("Does fine-tuning teach haggling?", ft))
    if published_dir and Path(published_dir).is_dir():
        t3 = table3(published_dir, paper_table3_files(), "paper")
        paper = pd.DataFrame([{"cot": k, **v} for k, v in PAPER_TABLE3.items()])
        corrected = table3(published_dir, size_cot_files(), "corrected")
        sections.append(("Table 3 reproduced (paper formulas, the paper's 35 pairs)",
                         _table_html(t3, ["cot", "n", *TABLE3_METRICS]) + "<p>The paper printed:</p>" +
                         _table_html(paper, ["cot", *TABLE3_METRICS])))
        sections.append(("Table 3, all 36 size x CoT pairs, corrected formulas (mean [95% CI over pairs])",
                         with_ci(corrected, "cot").to_html(index=False, border=0, classes="t") +
                         "<p>See docs/report_notes.md for which of the paper's conclusions survive.</p>"))
    browser = _browser(turns) if len(turns) else "<p>no transcripts</p>"
    sections.append(("Transcript browser", browser))
    body = "\n".join(f"<h2>{html.escape(t)}</h2>\n{c}" for t, c in sections)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>AgreeMate report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}} table.t{{border-collapse:collapse;font-size:12px}}
table.t td,table.t th{{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}} img{{max-width:100%}}
.cols{{display:flex;gap:1em}} .col{{flex:1;border:1px solid #ccc;padding:.5em;font-size:13px}}
.buyer{{background:#eef5ff}} .seller{{background:#fff4e6}} .act{{font-weight:bold;color:#444}}
.price{{background:#ffe066;padding:0 3px;border-radius:3px}} .bad{{color:#c00}}</style></head><body>
<h1>AgreeMate report</h1>{body}</body></html>"""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def finetuning_section(table: pd.DataFrame, summary: pd.DataFrame | None, published_dir) -> str:
    """Fine-tuned vs base vs human (and the published Llama-3B fine-tuned rows): the pairs' means with CIs, the act
    divergence from the human dialogues, and paired per-scenario tests. Empty when no fine-tuned pair was run."""
    from agreemate_lib.evaluation.comparisons import FINETUNE_METRICS, FINETUNE_PAIRS, finetuning_comparison

    if summary is None or FINETUNE_PAIRS["fine-tuned"] not in set(summary["pair"]):
        return ""
    keep = [*FINETUNE_PAIRS.values(), "human+human"]
    rows = with_ci(summary[summary["pair"].isin(keep)], "pair")
    cols = ["pair", "n", "error_rate", "act_divergence", *FINETUNE_METRICS]
    tests = finetuning_comparison(table, published_dir)
    unmatched = sorted(set(tests.loc[tests["n_matched"] == 0, "against"])) if len(tests) else []
    tests = tests[tests["n_matched"] > 0] if len(tests) else tests
    note = (f"<p>No scenario in common with: {html.escape(', '.join(unmatched))} (the study's scenarios are not the "
            "paper's listings; run with split: paper to compare per scenario).</p>" if unmatched else "")
    return ("<p>Means with 95% bootstrap CIs; act_divergence is the JS divergence of each pair's dialogue acts from "
            "the human dialogues' (0 = the same distribution).</p>" +
            rows[[c for c in cols if c in rows]].to_html(index=False, border=0, classes="t") +
            "<p>Paired per-scenario differences (ours minus the other; sign-flip permutation test, bootstrap CI):</p>" +
            _table_html(tests, ["ours", "against", "metric", "n_matched", "mean_difference", "ci_low", "ci_high",
                                "p_value"]) + note)


def _browser(turns: pd.DataFrame) -> str:
    """Pick a scenario and two pairs: their negotiations side by side, acts and prices highlighted."""
    t = turns.copy()
    t["pair"] = t["buyer_id"] + "+" + t["seller_id"]
    data: dict[str, dict[str, list]] = {}
    for (sid, pair), g in t.sort_values("turn_index").groupby(["scenario_id", "pair"]):
        g = g[g["replicate"] == g["replicate"].min()] if "replicate" in g else g
        data.setdefault(sid, {})[pair] = [
            {"s": r.speaker, "a": r.action, "u": r.utterance, "p": None if pd.isna(r.price) else float(r.price),
             "ok": bool(r.parse_ok), "o": r.outcome, "ap": None if pd.isna(r.accepted_price) else float(r.accepted_price)}
            for r in g.itertuples()]
    titles = t.groupby("scenario_id")["title"].first().to_dict()
    blob = json.dumps({"data": data, "titles": titles}).replace("</", "<\\/")
    return f"""<div>Scenario <select id="sc"></select> left <select id="pa"></select> right <select id="pb"></select></div>
<div class="cols"><div class="col" id="ca"></div><div class="col" id="cb"></div></div>
<script>const B={blob};
const sc=document.getElementById('sc'),pa=document.getElementById('pa'),pb=document.getElementById('pb');
function esc(s){{return (s||'').replace(/[&<>]/g,c=>({{'&':'&amp;','<':'&lt;','>':'&gt;'}})[c])}}
for(const k of Object.keys(B.data).sort()){{const o=document.createElement('option');o.value=k;o.text=k+' '+(B.titles[k]||'').slice(0,50);sc.add(o)}}
function pairs(){{const ps=Object.keys(B.data[sc.value]||{{}}).sort();for(const s of [pa,pb]){{const v=s.value;s.innerHTML='';
for(const p of ps){{const o=document.createElement('option');o.value=o.text=p;s.add(o)}}if(ps.includes(v))s.value=v}}
if(ps.length>1&&pa.value==pb.value)pb.value=ps[1];draw()}}
function col(el,p){{const ts=(B.data[sc.value]||{{}})[p]||[];let h='<b>'+esc(p)+'</b>';for(const t of ts){{
h+='<p class="'+t.s+(t.ok?'':' bad')+'"><span class="act">'+t.s+' ['+t.a+']</span> '+esc(t.u)+(t.p!==null?' <span class="price">$'+t.p+'</span>':'')+'</p>'}}
if(ts.length)h+='<p><b>outcome: '+ts[0].o+(ts[0].ap!==null?' at $'+ts[0].ap:'')+'</b></p>';el.innerHTML=h}}
function draw(){{col(document.getElementById('ca'),pa.value);col(document.getElementById('cb'),pb.value)}}
sc.onchange=pairs;pa.onchange=draw;pb.onchange=draw;pairs();</script>"""
