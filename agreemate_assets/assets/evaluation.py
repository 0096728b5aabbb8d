"""Evaluation assets: metrics per model pair, and one table over every materialized pair."""


from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, AssetKey, AutomationCondition, MaterializeResult, MetadataValue, asset

from agreemate_lib.evaluation.tables import negotiation_table, summarize
from agreemate_lib.evaluation.metrics import METRIC_NAMES
from agreemate_lib.core.io import atomic_write_parquet
from agreemate_lib.core.records import frame_to_negotiations

from ..metadata import md_table
from ..partitions import pair_partitions
from ..resources import StudySettings
from .negotiation import negotiation_transcripts, transcripts_path


def pair_metrics_path(study: StudySettings, buyer: str, seller: str) -> Path:
    return study.results_path() / "negotiation_metrics" / f"buyer={buyer}" / f"seller={seller}.parquet"


@asset(group_name="evaluation", partitions_def=pair_partitions, deps=[negotiation_transcripts], code_version="1",
       automation_condition=AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed(),
       description="Every metric of every negotiation of one model pair (corrected formulas; see docs/metrics.md).")
def negotiation_metrics(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    b, s = keys["buyer"], keys["seller"]
    src = transcripts_path(study, b, s)
    if not src.is_file():
        raise FileNotFoundError(f"transcripts for {b}|{s} missing at {src}: materialize negotiation_transcripts first")
    table = negotiation_table(frame_to_negotiations(pd.read_parquet(src)))
    path = atomic_write_parquet(table, pair_metrics_path(study, b, s))
    summary = summarize(table, "pair", n_boot=1000).iloc[0].to_dict() if len(table) else {}
    return MaterializeResult(metadata={
        "negotiations": len(table),
        **{m: float(summary.get(m, float("nan"))) for m in METRIC_NAMES},
        "parse_failure_rate": float(summary.get("parse_failure_rate", 0.0)),
        "path": MetadataValue.path(str(path)),
    })


@asset(group_name="evaluation", deps=[negotiation_metrics], code_version="1",
       description="All metrics with bootstrap 95% CIs, one row per materialized model pair.")
def metrics(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    keys = context.instance.get_materialized_partitions(AssetKey("negotiation_metrics"))
    frames = []
    for key in sorted(keys):
        b, s = key.split("|")[0], key.split("|")[1]
        p = pair_metrics_path(study, b, s)
        if p.is_file():
            frames.append(pd.read_parquet(p))
        else:
            context.log.warning(f"negotiation_metrics {key} is recorded as materialized but {p} is missing")
    per_neg = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table = summarize(per_neg, "pair") if len(per_neg) else pd.DataFrame(columns=["pair", "n", *METRIC_NAMES])
    out = study.results_path()
    atomic_write_parquet(per_neg, out / "metrics_by_negotiation.parquet")
    path = atomic_write_parquet(table, out / "metrics.parquet")
    cols = ["pair", "n", *METRIC_NAMES]
    return MaterializeResult(metadata={
        "pairs": len(table),
        "negotiations": len(per_neg),
        "path": MetadataValue.path(str(path)),
        "table": MetadataValue.md(md_table(table[cols]) if len(table) else "no pair materialized yet"),
    })


# --- the paper's published runs, the human baseline, Table 3 ------------------------------------------------------

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec  # noqa: E402

from agreemate_lib.core import settings as lib_settings  # noqa: E402


def published_dir() -> Path | None:
    d = lib_settings.data_dir()
    p = d / "agreemate_published_runs" if d else None
    return p if p and p.is_dir() else None


@asset(group_name="evaluation", code_version="1",
       check_specs=[AssetCheckSpec("published_runs_findings", asset="published_runs",
                                   description="The transcript contract applied to the paper's runs (warn)")],
       description="The 90 published AgreeMate CSVs (Llama 3B/8B/70B) as their own pairs (agent ids prefixed "
                   "published-): per-negotiation metrics in both formula modes, and what the checks find.")
def published_runs(context: AssetExecutionContext, study: StudySettings):
    from agreemate_lib.evaluation.tables import published_table
    from agreemate_lib.evaluation.paper import published_negotiations
    from agreemate_lib.core.records import negotiations_to_frame

    from ..transcript_checks import transcript_outcomes

    d = published_dir()
    if d is None:
        raise FileNotFoundError("no agreemate_published_runs folder in the data setting (AGREEMATE_DATA_DIR)")
    files = sorted(f for f in d.glob("*.csv") if not f.stem.endswith("_updated"))
    tables = []
    for mode in ("corrected", "paper"):
        for f in files:
            t = published_table(f, mode)
            t["file"] = f.name
            tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    out = study.results_path()
    path = atomic_write_parquet(table, out / "published_runs_metrics.parquet")
    negs = [n for f in files for n in published_negotiations(f)]
    turns = negotiations_to_frame(negs)
    atomic_write_parquet(turns, out / "published_runs_turns.parquet")
    yield MaterializeResult(metadata={"files": len(files), "negotiations": len(negs),
                                      "pairs": int(table["pair"].nunique()), "path": MetadataValue.path(str(path))})
    errors, warnings = transcript_outcomes(turns, max_turns=15, warn_rate=1.0)
    corrected = table[table["formula"] == "corrected"]
    bias_out = corrected[(corrected["bias"].abs() > 1)]
    no_price = sum(1 for f in files for n in published_negotiations(f) if n.outcome == "accepted"
                   and n.accepted_price is None)
    yield AssetCheckResult(
        check_name="published_runs_findings", asset_key="published_runs", passed=not (errors or warnings),
        severity=AssetCheckSeverity.WARN,
        metadata={"accepted_without_price": no_price,
                  "actions_outside_vocabulary": int((~turns["action_known"]).sum()),
                  "example_unknown_actions": MetadataValue.json(
                      turns.loc[~turns["action_known"], "raw_output"].value_counts().head(10).to_dict()),
                  "deals_with_bias_outside_[-1,1]": len(bias_out),
                  "failed_expectations": MetadataValue.json([f"{o.name}: {o.unexpected_count}" for o in
                                                             errors + warnings])})


@asset(group_name="evaluation", deps=["craigslist_raw"], code_version="1",
       description="Human-human Craigslist Bargains dialogues (validation split, annotated intents and prices) "
                   "scored with the same metrics, as the pair human+human.")
def human_baseline(study: StudySettings) -> MaterializeResult:
    from agreemate_lib.evaluation.comparisons import human_baseline_table

    table = human_baseline_table("validation", study.source())
    path = atomic_write_parquet(table, study.results_path() / "human_baseline.parquet")
    return MaterializeResult(metadata={
        "negotiations": len(table), "agreement_rate": float(table["agreement_rate"].mean()),
        "dialogue_length": float(table["dialogue_length"].mean()), "path": MetadataValue.path(str(path)),
        "note": "He et al. 2018 report 0.91 agreement and 10.2 turns on the full data; see docs/report_notes.md",
    })


@asset(group_name="evaluation", deps=[published_runs], code_version="1",
       description="The paper's Table 3 (CoT vs no-CoT) reproduced with the paper's formulas and list, and over "
                   "all 36 size x CoT pairs with corrected formulas and CIs.")
def table3(study: StudySettings) -> MaterializeResult:
    from agreemate_lib.evaluation.comparisons import PAPER_TABLE3, TABLE3_METRICS, paper_table3_files, size_cot_files
    from agreemate_lib.evaluation.comparisons import table3 as make_table3

    d = published_dir()
    if d is None:
        raise FileNotFoundError("no agreemate_published_runs folder in the data setting")
    repro = make_table3(d, paper_table3_files(), "paper").assign(version="paper formulas, paper's 35 pairs")
    corrected = make_table3(d, size_cot_files(), "corrected").assign(version="corrected formulas, 36 pairs")
    both = pd.concat([repro, corrected], ignore_index=True)
    path = atomic_write_parquet(both, study.results_path() / "table3.parquet")
    worst = max(abs(float(repro.loc[repro["cot"] == c, m].iloc[0]) - v)
                for c, vals in PAPER_TABLE3.items() for m, v in vals.items())
    return MaterializeResult(metadata={
        "max_abs_diff_vs_paper": worst,
        "reproduction": MetadataValue.md(md_table(repro[["cot", "n", *TABLE3_METRICS]])),
        "corrected": MetadataValue.md(md_table(corrected[["cot", "n", *TABLE3_METRICS]])),
        "path": MetadataValue.path(str(path)),
    })


def _labels(pair_ids: pd.DataFrame, roster: dict) -> pd.DataFrame:
    """Group labels of a pair from its agents: personality pair, CoT, model size/name."""
    import re

    def agent_info(agent_id: str) -> dict:
        spec = roster.get(agent_id)
        if spec is not None:
            return {"personality": spec.personality or "baseline", "cot": spec.cot, "model": spec.model}
        a = agent_id.lower()
        pers = next((p for p in ("aggressive", "fair", "passive") if a.endswith(p)), "baseline")
        size = re.search(r"(\d+b)", a)
        return {"personality": pers, "cot": "cot" in a, "model": size.group(1) if size else a}

    rows = []
    for b, s in pair_ids[["buyer_id", "seller_id"]].drop_duplicates().itertuples(index=False):
        ib, is_ = agent_info(b), agent_info(s)
        rows.append({"buyer_id": b, "seller_id": s, "pair_personality": f"{ib['personality']} x {is_['personality']}",
                     "pair_cot": "cot" if (ib["cot"] or is_["cot"]) else "no-cot",
                     "pair_size": f"{ib['model']} x {is_['model']}"})
    return pd.DataFrame(rows)


@asset(group_name="evaluation", deps=[metrics, published_runs], code_version="1",
       description="The paper's group tables (personality pairs, CoT vs no-CoT, sizes) over our pairs and the "
                   "published pairs: means over pairs and pooled over negotiations, with CIs; and paired "
                   "comparisons of pairs that share an opponent, on the same scenarios.")
def group_tables(study: StudySettings) -> MaterializeResult:
    from agreemate_lib.evaluation.comparisons import group_tables as make_groups
    from agreemate_lib.evaluation.comparisons import paired_comparison
    from agreemate_lib.negotiation.roster import load_roster

    out = study.results_path()
    frames = []
    if (out / "metrics_by_negotiation.parquet").is_file():
        frames.append(pd.read_parquet(out / "metrics_by_negotiation.parquet").assign(source="ours"))
    if (out / "published_runs_metrics.parquet").is_file():
        pub = pd.read_parquet(out / "published_runs_metrics.parquet")
        frames.append(pub[pub["formula"] == "corrected"].assign(source="published"))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if table.empty:
        return MaterializeResult(metadata={"note": "nothing to group yet"})
    labels = _labels(table, load_roster(study.roster_file(), include_disabled=True))
    table = table.merge(labels, on=["buyer_id", "seller_id"], how="left")
    results = []
    for grouping in ("pair_personality", "pair_cot", "pair_size"):
        for source, sub in table.groupby("source"):
            groups = dict(zip(sub["pair"], sub[grouping]))
            g = make_groups(sub, groups, n_boot=1000)
            if len(g):
                results.append(g.assign(grouping=grouping, source=source))
    groups_df = pd.concat(results, ignore_index=True)
    atomic_write_parquet(groups_df, out / "group_tables.parquet")
    comps = []
    ours = table[table["source"] == "ours"]
    pairs = ours[["pair", "buyer_id", "seller_id"]].drop_duplicates().to_dict("records")
    for i, a in enumerate(pairs):
        for b in pairs[i + 1:]:
            if a["seller_id"] == b["seller_id"] or a["buyer_id"] == b["buyer_id"]:
                for m in ("agreement_rate", "fairness"):
                    comps.append(paired_comparison(ours, a["pair"], b["pair"], m))
    comp_df = pd.DataFrame(comps)
    atomic_write_parquet(comp_df, out / "paired_comparisons.parquet")
    show = groups_df[groups_df["grouping"] == "pair_personality"]
    return MaterializeResult(metadata={
        "groupings": MetadataValue.json(sorted(groups_df["grouping"].unique().tolist())),
        "personality_pairs": MetadataValue.md(md_table(show[["source", "by", "group", "n", "agreement_rate",
                                                             "fairness"]])),
        "paired_comparisons": MetadataValue.md(md_table(comp_df) if len(comp_df) else "fewer than two related pairs"),
        "test": "paired sign-flip permutation test on matched scenario ids",
    })
