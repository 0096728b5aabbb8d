"""A static one-page HTML report: tables, figures and a transcript browser. No server, no network needed."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
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


#: The commands that make each section's inputs (named where a section has nothing to show).
COMMANDS = {
    "study": "bash scripts/main.sh   (or: dagster asset materialize -m agreemate_assets.definitions --select "
             "'negotiation_transcripts negotiation_metrics metrics_by_negotiation' --partition BUYER|SELLER)",
    "published": "set AGREEMATE_DATA_DIR to the folder that holds agreemate_published_runs/",
    "adapters": "agreemate train ROLE --out DIR   (or: dagster asset materialize -m agreemate_assets.definitions "
                "--select lora_adapters --partition buyer)",
    "probing": "dagster asset materialize -m agreemate_assets.definitions --select probing_outputs --partition base "
               "(and buyer, seller, generalist), then --select probing_comparison",
    "quality": "materialize the report asset through Dagster (the check results live in the instance)",
}


@dataclass
class ReportExtras:
    """What the report shows beyond the study's tables: each part optional (its section then says what makes it)."""

    traits: dict | None = None  # agent id -> paper_figures.AgentTraits (ours beside the paper's figures)
    adapters: dict[str, Path] = field(default_factory=dict)  # agent id -> adapter folder (manifest, curves)
    probing_dir: Path | None = None  # results folder holding probing_outputs/ and probing/differences.parquet
    quality: pd.DataFrame | None = None  # per partition and check: passed, severity, a detail
    left_out: list[dict] = field(default_factory=list)  # pairs not scored, with the reason
    provenance: dict = field(default_factory=dict)


def report_extras(table: pd.DataFrame, results_dir: Path, roster_file: str | Path | None = None) -> ReportExtras:
    """What the report can show outside Dagster: traits and adapters of the roster's agents in ``table``, the probing
    outputs under ``results_dir``, provenance (check results need the Dagster instance)."""
    from agreemate_lib.backends.models import resolve_adapter
    from agreemate_lib.core.provenance import provenance
    from agreemate_lib.core.settings import repo_root
    from agreemate_lib.evaluation.paper_figures import roster_traits
    from agreemate_lib.negotiation.roster import load_roster

    roster = load_roster(roster_file)
    used = set(table["buyer_id"]) | set(table["seller_id"]) if len(table) else set()
    return ReportExtras(traits=roster_traits(roster),
                        adapters={a: Path(resolve_adapter(s.adapter)) for a, s in roster.items()
                                  if s.adapter and a in used},
                        probing_dir=results_dir, provenance=provenance(repo_root()) | {"results": str(results_dir)})


def _missing(what: str, key: str) -> str:
    return f'<p class="missing">Not materialized: {html.escape(what)}. Make it with: <code>{html.escape(COMMANDS[key])}</code></p>'


def _chart_html(chart, figdir: Path, name: str) -> str:
    paths = F.save_chart(chart, figdir, name)
    return _img(paths["png"]) + f'<p><a class="interactive" href="figures/{name}.html">interactive</a></p>'


def build_report(out_dir: str | Path, table: pd.DataFrame, turns: pd.DataFrame,
                 published_dir: str | Path | None = None, human_source: str | None = None,
                 include_human: bool = True, n_boot: int = 2000, extras: ReportExtras | None = None) -> Path:
    """The static HTML report from our per-negotiation metrics (``table``, only scored negotiations) and turns.

    Sections: the paper reproduced (its figures from the published runs, Table 3), our study (tables and figures),
    fine-tuning, probing, data quality, provenance, and a transcript browser. A section whose inputs are missing
    says so and names the command that makes them."""
    from agreemate_lib.evaluation import paper_figures as PF

    extras = extras or ReportExtras()
    out = Path(out_dir)
    figdir = out / "figures"
    ours_table, ours_turns = table, turns
    humans_table = pd.DataFrame()
    if include_human:
        humans = human_negotiations("validation", human_source)
        humans_table = negotiation_table(humans)
        table = pd.concat([table, humans_table], ignore_index=True)
        turns = pd.concat([turns, negotiations_to_frame(humans)], ignore_index=True)
    have_published = bool(published_dir) and Path(published_dir).is_dir()
    sections: list[tuple[str, str]] = []

    # 1. the paper reproduced
    parts = []
    fig_data = None
    if have_published:
        fig_data = PF.figure_data(published_dir, ours_table, ours_turns, extras.traits or {}, humans_table)
        for name, (title, _group) in PF.PAPER_FIGURES.items():
            if name == "paper_finetuning":
                continue  # shown in the fine-tuning section
            counts = PF.figure_sources(name, fig_data)
            parts.append(f"<h3>{html.escape(title)}</h3><p>negotiations shown: "
                         + html.escape(", ".join(f"{k}: {v}" for k, v in counts.items())) + "</p>"
                         + _chart_html(PF.paper_figure(name, fig_data), figdir, name))
        t3 = table3(published_dir, paper_table3_files(), "paper")
        paper = pd.DataFrame([{"cot": k, **v} for k, v in PAPER_TABLE3.items()])
        corrected = table3(published_dir, size_cot_files(), "corrected")
        parts.append("<h3>Table 3 reproduced (paper formulas, the paper's 35 pairs)</h3>"
                     + _table_html(t3, ["cot", "n", *TABLE3_METRICS]) + "<p>The paper printed:</p>"
                     + _table_html(paper, ["cot", *TABLE3_METRICS]))
        parts.append("<h3>Table 3, all 36 size x CoT pairs, corrected formulas (mean [95% CI over pairs])</h3>"
                     + with_ci(corrected, "cot").to_html(index=False, border=0, classes="t")
                     + "<p>See docs/report_notes.md for which of the paper's conclusions survive.</p>")
    else:
        parts.append(_missing("the paper's published runs", "published"))
    sections.append(("The paper reproduced", "\n".join(parts)))

    # 2. our study
    summary = None
    parts = []
    if len(ours_table):
        from agreemate_lib.evaluation.human import human_act_distribution

        summary = summarize(table, "pair", n_boot=n_boot, act_reference=human_act_distribution("validation",
                                                                                               human_source))
        parts.append("<h3>Metrics per pair (mean [95% bootstrap CI])</h3>"
                     + with_ci(summary, "pair").to_html(index=False, border=0, classes="t"))
        for name, chart in figure_charts(table, turns).items():
            parts.append(f"<h3>{html.escape(name.replace('_', ' '))}</h3>" + _chart_html(chart, figdir, name))
    else:
        parts.append(_missing("our study's negotiations", "study"))
    sections.append(("Our study", "\n".join(parts)))

    # 3. fine-tuning
    parts = [_adapters_html(extras.adapters, figdir)]
    if fig_data is not None:
        parts.append("<h3>Base vs fine-tuned vs generalist, ours beside the paper's 3B runs</h3>"
                     + _chart_html(PF.paper_figure("paper_finetuning", fig_data), figdir, "paper_finetuning"))
    ft = finetuning_section(table, summary, published_dir)
    parts.append("<h3>Does fine-tuning teach haggling?</h3>" + (ft or _missing("a fine-tuned pair of our study",
                                                                               "study")))
    sections.append(("Fine-tuning", "\n".join(parts)))

    # 4. probing, 5. data quality, 6. provenance
    sections.append(("Probing", _probing_html(extras.probing_dir)))
    sections.append(("Data quality", _quality_html(summary, extras)))
    sections.append(("Provenance", _provenance_html(extras.provenance)))
    sections.append(("Transcript browser", _browser(turns) if len(turns) else "<p>no transcripts</p>"))

    toc = "".join(f'<li><a href="#s{i}">{html.escape(t)}</a></li>' for i, (t, _) in enumerate(sections))
    body = "\n".join(f'<h2 id="s{i}">{html.escape(t)}</h2>\n{c}' for i, (t, c) in enumerate(sections))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>AgreeMate report</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}} table.t{{border-collapse:collapse;font-size:12px}}
table.t td,table.t th{{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}} img{{max-width:100%}}
.cols{{display:flex;gap:1em}} .col{{flex:1;border:1px solid #ccc;padding:.5em;font-size:13px}}
.buyer{{background:#eef5ff}} .seller{{background:#fff4e6}} .act{{font-weight:bold;color:#444}}
.missing{{background:#fff3cd;padding:.4em}} .fail{{color:#c00;font-weight:bold}}
.price{{background:#ffe066;padding:0 3px;border-radius:3px}} .bad{{color:#c00}}</style></head><body>
<h1>AgreeMate report</h1><ol>{toc}</ol>{body}</body></html>"""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _adapters_html(adapters: dict[str, Path], figdir: Path) -> str:
    """Per adapter of the study: held-out perplexity against the base model (with its CI), the training run, and the
    training curves."""
    from agreemate_lib.training.shipping import read_manifest

    rows, curves = [], []
    for agent, folder in sorted(adapters.items()):
        m = read_manifest(folder)
        if m is None:
            continue
        x = m.get("metrics", {})
        rows.append({"agent": agent, "role": m.get("role"), "adapter": str(folder), "digest": m.get("digest"),
                     "data_version": m.get("data_version"), "steps": x.get("steps"),
                     "stop_reason": x.get("stop_reason"), "base_perplexity": x.get("base_validation_perplexity"),
                     "adapter_perplexity": x.get("validation_perplexity"),
                     "reduction": x.get("perplexity_reduction"),
                     "reduction_95ci": (f"[{x['perplexity_reduction_ci_low']:.3f}, "
                                        f"{x['perplexity_reduction_ci_high']:.3f}]"
                                        if "perplexity_reduction_ci_low" in x else ""),
                     "validation_dialogues": x.get("validation_dialogues")})
        c = Path(folder) / "curves.parquet"
        if c.is_file():
            curves.append(pd.read_parquet(c).assign(role=f"{m.get('role')} ({agent})"))
    if not rows:
        return "<h3>Adapters</h3>" + _missing("an adapter with a manifest in the roster", "adapters")
    out = ("<h3>Adapters: held-out perplexity of the role's turns, base model vs adapter (95% bootstrap CI over "
           "validation dialogues)</h3>" + pd.DataFrame(rows).to_html(index=False, border=0, classes="t",
                                                                      float_format=lambda v: f"{v:.3f}"))
    if curves:
        out += "<h3>Training curves</h3>" + _chart_html(F.training_curves(pd.concat(curves, ignore_index=True)),
                                                         figdir, "training_curves")
    return out


def _probing_html(probing_dir: Path | None) -> str:
    """Top heads per variant (verb/control attention ratio, 95% CI) and the adapter - base differences whose CI
    excludes 0."""
    heads_files = sorted((probing_dir / "probing_outputs").glob("*.parquet")) if probing_dir else []
    if not heads_files:
        return _missing("the probing outputs", "probing")
    heads = pd.concat([pd.read_parquet(f) for f in heads_files], ignore_index=True)
    ratio = heads[heads["quantity"] == "ratio"]
    top = (ratio.sort_values(["variant", "mean"], ascending=[True, False]).groupby("variant").head(5)
           [["variant", "layer", "head", "mean", "ci_low", "ci_high"]])
    out = ("<h3>Top heads per variant: attention ratio price-token to negotiation verbs / control verbs (mean, 95% "
           "bootstrap CI over transcripts no adapter trained on)</h3>" + _table_html(top, list(top.columns)))
    diff_path = probing_dir / "probing" / "differences.parquet"
    if diff_path.is_file():
        d = pd.read_parquet(diff_path)
        sig = d[(d["ci_low"] > 0) | (d["ci_high"] < 0)]
        sig = sig.reindex(sig["difference"].abs().sort_values(ascending=False).index).head(15)
        out += (f"<h3>Adapter - base, per head (paired bootstrap): {len(sig)} shown of the heads whose CI excludes "
                f"0 (of {len(d)} head x variant differences)</h3>" + _table_html(sig, list(sig.columns)))
    else:
        out += _missing("the base vs adapter comparison", "probing")
    return out


def _quality_html(summary: pd.DataFrame | None, extras: ReportExtras) -> str:
    parts = []
    q = extras.quality
    left_out = list(extras.left_out)
    if q is not None and len(q):
        failed = q[q["passed"] == False]  # noqa: E712
        blocking = failed[failed["severity"] == "ERROR"]
        parts.append(f"<h3>Check results per partition (latest evaluation): {len(blocking)} blocking (ERROR) and "
                     f"{len(failed) - len(blocking)} warning (WARN) checks failed, of {len(q)}</h3>"
                     + q.to_html(index=False, border=0, classes="t", na_rep=""))
        # a pair whose blocking check failed never reaches the metrics: say so beside the ones left out
        scored = set(summary["pair"]) if summary is not None else set()
        named = {str(x.get("pair")) for x in left_out}
        for part in sorted(set(blocking["partition"])):
            pair = part.replace("|", "+")
            if pair not in scored and part not in named:
                left_out.append({"pair": part, "reason": "its latest transcripts failed the blocking check "
                                                         + ", ".join(sorted(set(blocking.loc[blocking["partition"] == part, "check"])))})
    else:
        parts.append("<h3>Check results per partition</h3>" + _missing("check results", "quality"))
    if summary is not None:
        cols = ["pair", "n", "n_error", "error_rate", "parse_failure_rate", "anomaly_rate"]
        parts.append("<h3>Errors and parse failures per pair (errors are counted, never scored)</h3>"
                     + _table_html(summary, cols))
    if left_out:
        parts.append("<h3>Pairs left out of the metrics, and why</h3>"
                     + pd.DataFrame(left_out).to_html(index=False, border=0, classes="t"))
    else:
        parts.append("<p>No pair was left out of the metrics.</p>")
    return "\n".join(parts)


def _provenance_html(prov: dict) -> str:
    if not prov:
        return "<p>No provenance was recorded (the report was built outside Dagster).</p>"
    rows = []
    for k, v in prov.items():
        shown = json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
        rows.append(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'><code>{html.escape(shown)}</code>"
                    "</td></tr>")
    return f'<table class="t">{"".join(rows)}</table>'


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
