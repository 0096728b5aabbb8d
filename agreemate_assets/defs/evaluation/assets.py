"""Evaluation assets: metrics per model pair, and one table over every materialized pair."""


from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AutomationCondition,
    MetadataValue,
    Output,
    asset,
    asset_check,
)

from agreemate_lib.core import settings as lib_settings
from agreemate_lib.core.records import frame_to_negotiations
from agreemate_lib.evaluation.metrics import metric_names
from agreemate_lib.evaluation.tables import negotiation_table, summarize, with_ci

from ...lib.metadata import md_table
from ...lib.resources import ResultsStore, StudySettings
from ...lib.versions import source_version
from ..negotiation.partitions import pair_partitions

#: Derived from the source that defines these assets (see agreemate_assets/lib/versions.py).
CODE_VERSION = source_version(
    __name__, "agreemate_lib.core", "agreemate_lib.evaluation", "agreemate_lib.negotiation.roster")


@asset(group_name="evaluation", partitions_def=pair_partitions, code_version=CODE_VERSION, kinds={"pandas", "parquet"},
       automation_condition=AutomationCondition.eager() & AutomationCondition.all_deps_blocking_checks_passed(),
       description="Every metric of every negotiation of one model pair (corrected formulas; see docs/metrics.md).")
def negotiation_metrics(context: AssetExecutionContext, study: StudySettings,
                        negotiation_transcripts: pd.DataFrame) -> Output[pd.DataFrame]:
    table = negotiation_table(frame_to_negotiations(negotiation_transcripts))
    for col in PROVENANCE:  # what the transcripts were produced from
        table[col] = negotiation_transcripts[col].iloc[0] if col in negotiation_transcripts and len(table) else None
    summary = summarize(table, "pair", n_boot=study.bootstrap_resamples()).iloc[0].to_dict() if len(table) else {}
    return Output(table, metadata={
        "negotiations": len(table),
        "error_rate": float(summary.get("error_rate", 0.0)),
        **{m: float(summary.get(m, float("nan"))) for m in metric_names()},
        "parse_failure_rate": float(summary.get("parse_failure_rate", 0.0)),
    })


PROVENANCE = ("buyer_config_hash", "seller_config_hash", "scenarios_version")


def latest_check(instance, asset: str, check: str, partition: str):
    """The latest evaluation (``AssetCheckEvaluation``: passed, severity, metadata) of an asset check on one
    partition; None when it was never evaluated."""
    from dagster import AssetCheckKey, AssetKey
    from dagster._core.event_api import PartitionKeyFilter

    key = AssetCheckKey(AssetKey(asset), check)
    recs = instance.event_log_storage.get_asset_check_execution_history(
        key, limit=1, partition_filter=PartitionKeyFilter(key=partition))
    if not recs:
        return None
    ev = recs[0].event
    return ev.dagster_event.event_specific_data if ev and ev.dagster_event else None


def latest_check_passed(instance, partition: str) -> bool | None:
    """Whether the latest ``transcripts_valid`` evaluation of a pair passed (None: never evaluated)."""
    data = latest_check(instance, "negotiation_transcripts", "transcripts_valid", partition)
    return None if data is None else bool(getattr(data, "passed", False))


def current_pairs(instance, study: StudySettings, scenarios: pd.DataFrame,
                  tables: dict[str, pd.DataFrame]) -> tuple[list[str], list[dict]]:
    """(pairs to score, pairs left out with the reason): only pairs of the current roster, whose latest transcripts
    passed the blocking check, produced from the agents' current configs and the current scenarios."""
    from agreemate_lib.core.io import frame_version
    from agreemate_lib.negotiation.roster import load_roster

    roster = load_roster(study.roster_file())
    hashes = {a: spec.config_hash() for a, spec in roster.items()}
    version = frame_version(scenarios)
    keep, left_out = [], []
    for key in sorted(tables):
        b, s = str(key).split("|")
        t = tables[key]
        first = t.iloc[0] if len(t) else {}
        if b not in roster or s not in roster:
            reason = f"{b if b not in roster else s} is not an enabled agent of the roster"
        elif latest_check_passed(instance, str(key)) is False:
            reason = "its latest transcripts failed the blocking check transcripts_valid"
        elif first.get("buyer_config_hash") != hashes[b] or first.get("seller_config_hash") != hashes[s]:
            reason = "stale: an agent's config changed since it was negotiated"
        elif first.get("scenarios_version") != version:
            reason = "stale: the scenarios changed since it was negotiated"
        else:
            keep.append(key)
            continue
        left_out.append({"pair": str(key), "reason": reason})
    return keep, left_out


@asset(group_name="evaluation", code_version=CODE_VERSION, kinds={"pandas", "parquet"},
       ins={"negotiation_metrics": AssetIn("negotiation_metrics", metadata={"allow_missing_partitions": True}),
            "scenarios": AssetIn("scenarios")},
       description="Every negotiation of every current model pair, one row each with every metric. Current: both "
                   "agents in the roster, the latest transcripts passed the blocking check, negotiated from the "
                   "agents' current configs and the current scenarios; the others are listed with the reason.")
def metrics_by_negotiation(context: AssetExecutionContext, study: StudySettings, scenarios: pd.DataFrame,
                           negotiation_metrics: dict[str, pd.DataFrame]) -> Output[pd.DataFrame]:
    keep, left_out = current_pairs(context.instance, study, scenarios, negotiation_metrics)
    for item in left_out:
        context.log.warning(f"left out {item['pair']}: {item['reason']}")
    frames = [negotiation_metrics[k] for k in keep]
    per_neg = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Output(per_neg, metadata={
        "pairs": len(frames), "negotiations": len(per_neg), "pairs_left_out": len(left_out),
        "left_out": MetadataValue.md(md_table(pd.DataFrame(left_out)) if left_out else "none"),
        "left_out_pairs": MetadataValue.json(left_out),
    })


@asset(group_name="evaluation", code_version=CODE_VERSION, kinds={"pandas", "parquet"},
       description="All metrics with bootstrap 95% CIs, one row per materialized model pair.")
def metrics(study: StudySettings, metrics_by_negotiation: pd.DataFrame) -> Output[pd.DataFrame]:
    from agreemate_lib.evaluation.human import human_act_distribution

    per_neg = metrics_by_negotiation
    table = summarize(per_neg, "pair", n_boot=study.bootstrap_resamples(),
                      act_reference=human_act_distribution("validation", study.source())) if len(per_neg) else \
        pd.DataFrame(columns=["pair", "n", "n_error", "error_rate", *metric_names()])
    cols = ["pair", "n", "error_rate", *metric_names()]
    return Output(table, metadata={
        "pairs": len(table),
        "negotiations": len(per_neg),
        "table": MetadataValue.md(md_table(with_ci(table, "pair")) if len(table) else "no pair materialized yet"),
        "means": MetadataValue.md(md_table(table[cols]) if len(table) else "no pair materialized yet"),
    })


# --- the paper's published runs, the human baseline, Table 3 ------------------------------------------------------

def published_dir() -> Path | None:
    d = lib_settings.data_dir()
    p = d / "agreemate_published_runs" if d else None
    return p if p and p.is_dir() else None


def _published_files() -> list[Path]:
    d = published_dir()
    if d is None:
        raise FileNotFoundError("no agreemate_published_runs folder in the data setting (AGREEMATE_DATA_DIR)")
    return sorted(f for f in d.glob("*.csv") if not f.stem.endswith("_updated"))


@asset(group_name="evaluation", code_version=CODE_VERSION, kinds={"csv", "parquet"},
       description="The 90 published AgreeMate CSVs (Llama 3B/8B/70B) as their own pairs (agent ids prefixed "
                   "published-): per-negotiation metrics in both formula modes.")
def published_runs() -> Output[pd.DataFrame]:
    from agreemate_lib.evaluation.tables import published_table

    files = _published_files()
    tables = []
    for mode in ("corrected", "paper"):
        for f in files:
            t = published_table(f, mode)
            t["file"] = f.name
            tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    return Output(table, metadata={"files": len(files), "negotiations": int(len(table) // 2),
                                   "pairs": int(table["pair"].nunique())})


@asset(group_name="evaluation", code_version=CODE_VERSION, kinds={"csv", "parquet"},
       check_specs=[AssetCheckSpec("published_runs_findings", asset="published_run_transcripts",
                                   description="The transcript contract applied to the paper's runs (warn)")],
       description="The published runs' negotiations as turn tables in our transcript layout, with what the "
                   "transcript checks find in them.")
def published_run_transcripts():
    from agreemate_lib.core.records import negotiations_to_frame
    from agreemate_lib.evaluation.paper import published_negotiations

    from ..negotiation.checks import transcript_outcomes

    negs = [n for f in _published_files() for n in published_negotiations(f)]
    turns = negotiations_to_frame(negs)
    yield Output(turns, metadata={"negotiations": len(negs), "turns": len(turns)})
    errors, warnings = transcript_outcomes(turns, max_turns=15)
    no_price = sum(1 for n in negs if n.outcome == "accepted" and n.accepted_price is None)
    yield AssetCheckResult(
        check_name="published_runs_findings", asset_key="published_run_transcripts", passed=not (errors or warnings),
        severity=AssetCheckSeverity.WARN,
        metadata={"accepted_without_price": no_price,
                  "actions_outside_vocabulary": int((~turns["action_known"]).sum()),
                  "example_unknown_actions": MetadataValue.json(
                      turns.loc[~turns["action_known"], "raw_output"].value_counts().head(10).to_dict()),
                  "failed_expectations": MetadataValue.json([f"{o.name}: {o.unexpected_count}" for o in
                                                             errors + warnings])})


@asset_check(asset=published_runs, description="Deals whose corrected bias falls outside [-1, 1] (a deal outside "
             "the targets): counted, as the paper's runs have them (warn)")
def published_deals_outside_targets(published_runs: pd.DataFrame) -> AssetCheckResult:
    corrected = published_runs[published_runs["formula"] == "corrected"]
    out = corrected[corrected["bias"].abs() > 1]
    return AssetCheckResult(passed=out.empty, severity=AssetCheckSeverity.WARN,
                            metadata={"deals_with_bias_outside_[-1,1]": len(out),
                                      "examples": MetadataValue.json(out[["pair", "negotiation_id", "bias"]].head(5)
                                                                     .to_dict("records"))})


@asset(group_name="evaluation", deps=["craigslist_raw"], code_version=CODE_VERSION, kinds={"pandas", "parquet"},
       description="Human-human Craigslist Bargains dialogues (validation split, annotated intents and prices) "
                   "scored with the same metrics, as the pair human+human.")
def human_baseline(study: StudySettings) -> Output[pd.DataFrame]:
    from agreemate_lib.evaluation.human import human_baseline_table

    table = human_baseline_table("validation", study.source())
    return Output(table, metadata={
        "negotiations": len(table), "agreement_rate": float(table["agreement_rate"].mean()),
        "dialogue_length": float(table["dialogue_length"].mean()),
        "note": "He et al. 2018 report 0.91 agreement and 10.2 turns on the full data; see docs/report_notes.md",
    })


@asset(group_name="evaluation", deps=[published_runs], code_version=CODE_VERSION, kinds={"pandas", "parquet"},
       description="The paper's Table 3 (CoT vs no-CoT) reproduced with the paper's formulas and list, and over "
                   "all 36 size x CoT pairs with corrected formulas and CIs.")
def table3(study: StudySettings) -> Output[pd.DataFrame]:
    from agreemate_lib.evaluation.comparisons import PAPER_TABLE3, TABLE3_METRICS, paper_table3_files, size_cot_files
    from agreemate_lib.evaluation.comparisons import table3 as make_table3

    d = published_dir()
    if d is None:
        raise FileNotFoundError("no agreemate_published_runs folder in the data setting")
    n_boot = study.bootstrap_resamples()
    repro = make_table3(d, paper_table3_files(), "paper", n_boot).assign(version="paper formulas, paper's 35 pairs")
    corrected = make_table3(d, size_cot_files(), "corrected", n_boot).assign(version="corrected formulas, 36 pairs")
    both = pd.concat([repro, corrected], ignore_index=True)
    worst = max(abs(float(repro.loc[repro["cot"] == c, m].iloc[0]) - v)
                for c, vals in PAPER_TABLE3.items() for m, v in vals.items())
    return Output(both, metadata={
        "max_abs_diff_vs_paper": worst,
        "reproduction": MetadataValue.md(md_table(repro[["cot", "n", *TABLE3_METRICS]])),
        "corrected": MetadataValue.md(md_table(corrected[["cot", "n", *TABLE3_METRICS]])),
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


@asset(group_name="evaluation", code_version=CODE_VERSION, kinds={"pandas", "parquet"},
       description="The paper's group tables (personality pairs, CoT vs no-CoT, sizes) over our pairs and the "
                   "published pairs: means over pairs and pooled over negotiations, with CIs; and paired "
                   "comparisons of pairs that share an opponent, on the same scenarios (paired_comparisons.parquet "
                   "beside it).")
def group_tables(study: StudySettings, results_store: ResultsStore, metrics_by_negotiation: pd.DataFrame,
                 published_runs: pd.DataFrame) -> Output[pd.DataFrame]:
    from agreemate_lib.core.io import atomic_write_parquet
    from agreemate_lib.evaluation.comparisons import group_tables as make_groups
    from agreemate_lib.evaluation.comparisons import paired_comparison
    from agreemate_lib.negotiation.roster import load_roster

    frames = []
    if len(metrics_by_negotiation):
        frames.append(metrics_by_negotiation.assign(source="ours"))
    if len(published_runs):
        frames.append(published_runs[published_runs["formula"] == "corrected"].assign(source="published"))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if table.empty:
        return Output(pd.DataFrame(), metadata={"note": "nothing to group yet"})
    labels = _labels(table, load_roster(study.roster_file(), include_disabled=True))
    table = table.merge(labels, on=["buyer_id", "seller_id"], how="left")
    results = []
    for grouping in ("pair_personality", "pair_cot", "pair_size"):
        for source, sub in table.groupby("source"):
            groups = dict(zip(sub["pair"], sub[grouping]))
            g = make_groups(sub, groups, n_boot=study.bootstrap_resamples())
            if len(g):
                results.append(g.assign(grouping=grouping, source=source))
    groups_df = pd.concat(results, ignore_index=True)
    comps = []
    ours = table[table["source"] == "ours"]
    pairs = ours[["pair", "buyer_id", "seller_id"]].drop_duplicates().to_dict("records")
    for i, a in enumerate(pairs):
        for b in pairs[i + 1:]:
            if a["seller_id"] == b["seller_id"] or a["buyer_id"] == b["buyer_id"]:
                for m in ("agreement_rate", "fairness"):
                    comps.append(paired_comparison(ours, a["pair"], b["pair"], m))
    comp_df = pd.DataFrame(comps)
    atomic_write_parquet(comp_df, results_store.local_dir() / "paired_comparisons.parquet")
    show = groups_df[groups_df["grouping"] == "pair_personality"]
    return Output(groups_df, metadata={
        "groupings": MetadataValue.json(sorted(groups_df["grouping"].unique().tolist())),
        "personality_pairs": MetadataValue.md(md_table(show[["source", "by", "group", "n", "agreement_rate",
                                                             "fairness"]])),
        "paired_comparisons": MetadataValue.md(md_table(comp_df) if len(comp_df) else "fewer than two related pairs"),
        "test": "paired sign-flip permutation test on matched scenario ids",
    })
