"""Probing assets: attention head statistics per model variant (base and each role adapter), and comparisons."""

import base64
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd
from dagster import (
    AssetDep,
    AssetExecutionContext,
    AssetIn,
    MaterializeResult,
    MetadataValue,
    Output,
    StaticPartitionMapping,
    asset,
)

from agreemate_lib.core.io import atomic_write_parquet

from ...lib.metadata import md_table
from ...lib.resources import ResultsStore, StudySettings
from ...lib.versions import source_version
from ..negotiation.assets import ALL_TRANSCRIPTS, all_turns
from ..training.assets import adapter_dir
from .partitions import VARIANTS, variant_partitions

#: Derived from the source that defines these assets (see agreemate_assets/lib/versions.py).
CODE_VERSION = source_version(
    __name__, "agreemate_lib.core", "agreemate_lib.probing", "agreemate_lib.backends.models",
    "agreemate_lib.evaluation")

QUANTITIES = ("mass_verb", "mass_control", "ratio", "ld_mass_verb", "ld_mass_control", "ld_ratio")


def probe_dir(store: ResultsStore) -> Path:
    return store.local_dir("probing")


def sample_transcripts(turns: pd.DataFrame, study: StudySettings, n: int, seed: int):
    """A fixed, seeded set: half our own runs (when any are materialized), half human dialogues; none about a listing
    whose dialogues an adapter trained on (so base-vs-adapter differences are not memorisation)."""
    from agreemate_lib.core.records import frame_to_negotiations
    from agreemate_lib.evaluation.human import human_negotiations
    from agreemate_lib.training.splits import listing_key, trained_listing_keys

    rng = random.Random(seed)
    trained = trained_listing_keys(study.source(), study.seed)
    ours = frame_to_negotiations(turns) if len(turns) else []
    ours = [x for x in ours if len(x.turns) >= 3 and listing_key(x.scenario.get("title", "")) not in trained]
    humans = [h for h in human_negotiations("validation", study.source())
              if listing_key(h.scenario.get("title", "")) not in trained]
    if len(humans) < n - min(len(ours), n // 2):
        raise ValueError(f"only {len(humans)} human dialogues are about listings no adapter trained on; "
                         f"lower probe_transcripts (now {n})")
    k = min(len(ours), n // 2)
    picked = rng.sample(sorted(ours, key=lambda x: x.negotiation_id), k) + \
        rng.sample(sorted(humans, key=lambda x: x.negotiation_id), n - k)
    return picked


def load_probe_model(variant: str, store: ResultsStore):
    from agreemate_lib.backends.models import load_model

    adapter = None
    if variant != "base":
        adir = adapter_dir(store, variant)
        if not (adir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"no {variant} adapter at {adir}: materialize lora_adapters[{variant}] first")
        adapter = str(adir)
    # fp32 on CPU with eager attention: sdpa returns no attention weights
    return load_model("smollm2", dtype="fp32", device="cpu", attn_implementation="eager", adapter=adapter,
                      merge_adapter=True)


@asset(group_name="probing", partitions_def=variant_partitions, code_version=CODE_VERSION, kinds={"pytorch", "parquet"},
       ins={"transcripts": ALL_TRANSCRIPTS, "metrics_by_negotiation": AssetIn("metrics_by_negotiation")},
       deps=[AssetDep("lora_adapters", partition_mapping=StaticPartitionMapping(
           {"buyer": "buyer", "seller": "seller", "generalist": "generalist"}))],
       description="Per layer and head: attention mass from price tokens to negotiation verbs vs control verbs "
                   "(and across turns), with bootstrap CIs over a seeded set of transcripts; heads ranked.")
def probing_outputs(context: AssetExecutionContext, study: StudySettings, results_store: ResultsStore,
                    transcripts: dict[str, pd.DataFrame],
                    metrics_by_negotiation: pd.DataFrame) -> Output[pd.DataFrame]:
    from agreemate_lib.probing.heads import probe, summarize_probe, transcript_texts

    variant = context.partition_key
    t0 = time.perf_counter()
    negs = sample_transcripts(all_turns(transcripts, metrics_by_negotiation), study, study.probe_transcripts,
                              study.seed)
    tok, model = load_probe_model(variant, results_store)
    texts = transcript_texts(negs, tok)
    results, kept = probe(model, tok, texts)
    summary = summarize_probe(results, n_boot=study.bootstrap_resamples(), seed=study.seed)
    L, H = summary["ratio"][0].shape
    rows = []
    for q in QUANTITIES:
        mean, low, high = summary[q]
        for layer in range(L):
            for head in range(H):
                rows.append({"variant": variant, "quantity": q, "layer": layer, "head": head,
                             "mean": mean[layer, head], "ci_low": low[layer, head], "ci_high": high[layer, head]})
    heads = pd.DataFrame(rows)
    out = probe_dir(results_store)
    per = pd.DataFrame([{"variant": variant, "transcript": kept[i]["index"], "negotiation_id":
                         negs[kept[i]["index"]].negotiation_id, "layer": layer, "head": head,
                         "pk_verb": r.pk_verb[layer, head], "pk_control": r.pk_control[layer, head]}
                        for i, r in enumerate(results) for layer in range(L) for head in range(H)])
    atomic_write_parquet(per, out / f"per_transcript_{variant}.parquet")
    mean, low, high = summary["ratio"]
    top = pd.DataFrame([{"rank": k + 1, "layer": la, "head": h, "ratio": mean[la, h], "ci_low": low[la, h],
                         "ci_high": high[la, h]} for k, (la, h) in enumerate(summary["ranking"][:5])])
    rank_of = {lh: k + 1 for k, lh in enumerate(summary["ranking"])}
    paper = {"layer1_head3 (0-based)": rank_of.get((1, 3)), "layer1_head3 (1-based: 0,2)": rank_of.get((0, 2)),
             "layer2_head14": "does not exist here (9 heads per layer)"}
    return Output(heads, metadata={
        "transcripts": len(results), "heads": L * H, "top5": MetadataValue.md(md_table(top)),
        "paper_heads_rank_of_270": MetadataValue.json(paper), "wall_s": round(time.perf_counter() - t0, 1)})


@asset(group_name="probing", code_version=CODE_VERSION, kinds={"altair", "parquet"},
       ins={"probing_outputs": AssetIn("probing_outputs", metadata={"allow_missing_partitions": True}),
            "transcripts": ALL_TRANSCRIPTS, "metrics_by_negotiation": AssetIn("metrics_by_negotiation")},
       description="Per-head differences adapter - base with paired bootstrap CIs; heatmaps of the verb/control "
                   "ratio per variant and of the differences; a token-level view of the top heads.")
def probing_comparison(study: StudySettings, results_store: ResultsStore, probing_outputs: dict[str, pd.DataFrame],
                       transcripts: dict[str, pd.DataFrame], metrics_by_negotiation: pd.DataFrame
                       ) -> MaterializeResult:
    from agreemate_lib.evaluation.figures import head_heatmap, save_chart

    out = probe_dir(results_store)
    have = [v for v in VARIANTS if v in probing_outputs and (out / f"per_transcript_{v}.parquet").is_file()]
    if "base" not in have:
        raise FileNotFoundError("materialize probing_outputs[base] first")
    heads = pd.concat([probing_outputs[v] for v in have], ignore_index=True)
    ratio = heads[heads["quantity"] == "ratio"]
    base = pd.read_parquet(out / "per_transcript_base.parquet")
    rng = np.random.default_rng(study.seed)
    diffs = []
    for v in have:
        if v == "base":
            continue
        other = pd.read_parquet(out / f"per_transcript_{v}.parquet")
        m = base.merge(other, on=["negotiation_id", "layer", "head"], suffixes=("_base", "_adapter"))
        n = m["negotiation_id"].nunique()
        # paired: the same transcripts for base and adapter
        idx = rng.integers(0, n, size=(study.bootstrap_resamples(), n))
        for (layer, head), g in m.groupby(["layer", "head"]):
            g = g.sort_values("negotiation_id")
            a = g[["pk_verb_adapter", "pk_control_adapter", "pk_verb_base", "pk_control_base"]].to_numpy()

            def diff(rows):
                r = rows.mean(0) if rows.ndim == 2 else rows.mean(1)
                return r[..., 0] / r[..., 1] - r[..., 2] / r[..., 3]

            boots = diff(a[idx])
            diffs.append({"variant": v, "layer": layer, "head": head, "difference": float(diff(a)),
                          "ci_low": np.quantile(boots, 0.025), "ci_high": np.quantile(boots, 0.975), "n": n})
    diff_df = pd.DataFrame(diffs)
    atomic_write_parquet(diff_df, out / "differences.parquet")
    figs = results_store.local_dir("figures")
    paths = save_chart(head_heatmap(ratio, "mean", "verb/control attention ratio per head"), figs,
                       "probing_ratio_heatmap")
    meta = {"variants": MetadataValue.json(have),
            "figure": MetadataValue.md("![ratio](data:image/png;base64,"
                                       + base64.b64encode(paths["png"].read_bytes()).decode() + ")")}
    if len(diff_df):
        dp = save_chart(head_heatmap(diff_df, "difference", "adapter - base, ratio per head"), figs,
                        "probing_difference_heatmap")
        meta["difference_figure"] = MetadataValue.md("![diff](data:image/png;base64,"
                                                     + base64.b64encode(dp["png"].read_bytes()).decode() + ")")
        sig = diff_df[(diff_df["ci_low"] > 0) | (diff_df["ci_high"] < 0)]
        meta["heads_with_ci_excluding_0"] = len(sig)
    tok_paths = _token_view(study, results_store, ratio, all_turns(transcripts, metrics_by_negotiation))
    meta["token_view"] = MetadataValue.path(str(tok_paths["png"]))
    return MaterializeResult(metadata=meta)


def _token_view(study: StudySettings, store: ResultsStore, ratio: pd.DataFrame, turns: pd.DataFrame):
    """Attention from the last price token to each earlier token, for the base model's top 3 heads."""
    import torch

    from agreemate_lib.evaluation.figures import save_chart, token_attention
    from agreemate_lib.probing.heads import tag_tokens, transcript_texts

    base = ratio[ratio["variant"] == "base"].sort_values(["mean", "layer", "head"], ascending=[False, True, True])
    top = list(base[["layer", "head"]].head(3).itertuples(index=False, name=None))
    negs = sample_transcripts(turns, study, study.probe_transcripts, study.seed)
    tok, model = load_probe_model("base", store)
    text = next(t for t in transcript_texts(negs, tok) if "$" in t)
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False, truncation=True, max_length=1024)
    tags = tag_tokens(text, [tuple(o) for o in enc["offset_mapping"]])
    q = int(np.where(tags == 1)[0][-1])
    with torch.inference_mode():
        att = model(input_ids=torch.tensor([enc["input_ids"]]), output_attentions=True).attentions
    lo = max(0, q - 60)
    rows = []
    for layer, head in top:
        w = att[layer][0, head, q, lo : q + 1].numpy()
        for i, weight in enumerate(w):
            rows.append({"position": lo + i, "token": tok.decode([enc["input_ids"][lo + i]]).replace("\n", "\\n"),
                         "tag": ("other", "price", "verb", "control")[tags[lo + i]],
                         "head": f"L{layer}H{head}", "weight": float(weight)})
    return save_chart(token_attention(pd.DataFrame(rows)), store.local_dir("figures"), "probing_token_view")
