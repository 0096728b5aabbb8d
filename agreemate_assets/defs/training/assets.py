"""Training assets: role training splits (one output per role) and LoRA adapters partitioned by role."""

import json
import math
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    AssetOut,
    Config,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    multi_asset,
    multi_asset_check,
)

from agreemate_lib.core import settings as lib_settings
from agreemate_lib.training.lora import LoraTrainConfig
from agreemate_lib.training.splits import ROLES, build_role_splits

from ...lib.gx import validate
from ...lib.resources import ResultsStore, StudySettings
from ...lib.versions import source_version
from .partitions import role_partitions

#: Derived from the source that defines these assets (see agreemate_assets/lib/versions.py).
CODE_VERSION = source_version(
    __name__, "agreemate_lib.core", "agreemate_lib.training", "agreemate_lib.backends", "agreemate_lib.negotiation")

SPLIT_KEYS = {role: f"{role}_split" for role in ROLES}


class AdapterTraining(LoraTrainConfig, Config):
    """The lora_adapters run config: exactly :class:`LoraTrainConfig` (CPU-sized defaults, about 5 minutes a role
    here; ``preset: full`` = paper scale on a GPU)."""


def adapter_dir(store: ResultsStore, role: str) -> Path:
    return store.local_dir("adapters", role)


@multi_asset(outs={SPLIT_KEYS[r]: AssetOut(group_name="training", kinds={"pandas", "parquet"},
                                           code_version=CODE_VERSION,
                                           description=f"Training examples for the {r} adapter (context -> turn "
                                                       "JSON)")
                   for r in ROLES}, deps=["craigslist_raw"], can_subset=False)
def role_splits(study: StudySettings):
    d = lib_settings.data_dir()
    splits = build_role_splits(study.source(), d / "deal_or_no_deal" if d else None, seed=study.seed)
    for role, df in splits.items():
        yield Output(df, output_name=SPLIT_KEYS[role], metadata={
            "examples": len(df), "by_split": MetadataValue.json(df["split"].value_counts().to_dict()),
            "by_source": MetadataValue.json(df["source"].value_counts().to_dict()),
            "actions": MetadataValue.json(df["action"].value_counts().to_dict()),
            "dialogues": int(df["dialogue_id"].nunique()),
            "example": MetadataValue.json(json.loads(df.iloc[0]["target"]))})


@multi_asset_check(specs=[AssetCheckSpec("split_contract", asset=SPLIT_KEYS[r], blocking=True) for r in ROLES],
                   ins={r: AssetIn(SPLIT_KEYS[r]) for r in ROLES})
def role_split_checks(**splits: pd.DataFrame):
    import great_expectations.expectations as gxe

    from agreemate_lib.core.vocabulary import VOCABULARY

    for role in ROLES:
        df = splits[role]
        t = df.assign(target_action=df["target"].map(lambda s: json.loads(s).get("action")),
                      has_keys=df["target"].map(lambda s: set(json.loads(s)) >= {"reasoning", "action", "utterance",
                                                                                 "price"}),
                      thought_ok=df["target"].map(lambda s: str(json.loads(s).get("reasoning") or "None") != "None"),
                      pair_key=df["messages"] + "\x00" + df["target"])
        val_dialogues = set(t.loc[t["split"] == "validation", "dialogue_id"])
        t["leaks"] = (t["split"] == "train") & t["dialogue_id"].isin(val_dialogues)
        outcomes = validate(t, [
            gxe.ExpectColumnValuesToBeInSet(column="target_action", value_set=list(VOCABULARY)),
            gxe.ExpectColumnValuesToBeInSet(column="has_keys", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="thought_ok", value_set=[True]),
            gxe.ExpectColumnValuesToBeBetween(column="price", min_value=0, strict_min=True),
            gxe.ExpectColumnValuesToBeUnique(column="pair_key"),
            gxe.ExpectColumnValuesToBeInSet(column="leaks", value_set=[False]),
            gxe.ExpectColumnValuesToNotBeNull(column="messages"),
        ], f"split_{role}", ["example_id", "dialogue_id", "split", "action", "price"])
        failed = [o for o in outcomes if not o.success]
        yield AssetCheckResult(check_name="split_contract", asset_key=SPLIT_KEYS[role], passed=not failed,
                               severity=AssetCheckSeverity.ERROR,
                               metadata={"examples": len(t), "failed": MetadataValue.json(
                                   [f"{o.name}: {o.unexpected_count}" for o in failed]),
                                   "examples_failing": MetadataValue.json({o.name: o.examples for o in failed})})


@asset(group_name="training", partitions_def=role_partitions, code_version=CODE_VERSION,
       kinds={"pytorch", "safetensors"},
       ins={r: AssetIn(SPLIT_KEYS[r]) for r in ROLES},
       check_specs=[AssetCheckSpec("loss_finite", asset="lora_adapters", blocking=True),
                    AssetCheckSpec("beats_base_model", asset="lora_adapters"),
                    AssetCheckSpec("replies_parse", asset="lora_adapters", blocking=True)],
       description="A LoRA adapter per role (buyer, seller, generalist) on the embedded model: safetensors, "
                   "training config, metrics and curves.")
def lora_adapters(context: AssetExecutionContext, study: StudySettings, results_store: ResultsStore,
                  config: AdapterTraining, **splits: pd.DataFrame):
    from agreemate_lib.training.lora import train_lora

    role = context.partition_key
    df = splits[role]
    cfg = config.resolved(seed=study.seed)
    out = adapter_dir(results_store, role)
    m = train_lora(df[df["split"] == "train"], df[df["split"] == "validation"], out, cfg, log=context.log.info)
    yield MaterializeResult(metadata={
        **{k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in m.items()},
        "path": MetadataValue.path(str(out))})
    yield AssetCheckResult(check_name="loss_finite", passed=all(math.isfinite(m[k]) for k in
                           ("train_loss_final", "validation_loss")), metadata={"validation_loss": m["validation_loss"]})
    yield AssetCheckResult(check_name="beats_base_model", passed=m["validation_loss"] < m["base_validation_loss"],
                           severity=AssetCheckSeverity.WARN,
                           metadata={"validation_loss": m["validation_loss"],
                                     "base_validation_loss": m["base_validation_loss"]})
    yield replies_parse_check(study, out, role)


def replies_parse_check(study: StudySettings, adapter: Path, role: str) -> AssetCheckResult:
    """The adapter loads with peft and its agent produces parseable replies on 3 scenarios."""
    from agreemate_lib.core.scenarios import sample_scenarios
    from agreemate_lib.negotiation.agents import Agent, AgentSpec
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

    scen = sample_scenarios("test", 3, seed=study.seed).scenarios
    spec = AgentSpec(id=f"ft-{role}", adapter=str(adapter), cot=True, temperature=0.0, max_utterance_tokens=24,
                     max_reasoning_tokens=24)
    other = AgentSpec(id="rb", backend="rule-based", model="rule-based")
    me, them = Agent(spec), Agent(other)
    b, s = (me, them) if role != "seller" else (them, me)
    negs = run_negotiations(scen, b, s, RunConfig(max_turns=4, seed=study.seed))
    mine = [t for n in negs for t in n.turns if t.speaker == ("seller" if role == "seller" else "buyer")]
    ok = sum(t.parse_ok for t in mine)
    return AssetCheckResult(check_name="replies_parse", passed=bool(mine) and ok == len(mine),
                            metadata={"turns": len(mine), "parsed": ok,
                                      "examples": MetadataValue.json([t.raw_output for t in mine[:3]])})


@asset(group_name="reports", deps=[lora_adapters], code_version=CODE_VERSION, kinds={"altair", "png"},
       description="Training curves of the adapters: raw and EMA loss, validation loss, learning rate per layer "
                   "group, gradient norm, throughput.")
def figure_training_curves(results_store: ResultsStore) -> MaterializeResult:
    import base64

    from agreemate_lib.evaluation.figures import save_chart, training_curves

    frames = []
    for role in ROLES:
        p = adapter_dir(results_store, role) / "curves.parquet"
        if p.is_file():
            frames.append(pd.read_parquet(p).assign(role=role))
    if not frames:
        raise FileNotFoundError("no adapter has been trained yet: materialize lora_adapters first")
    paths = save_chart(training_curves(pd.concat(frames, ignore_index=True)), results_store.local_dir("figures"),
                       "training_curves")
    png = base64.b64encode(paths["png"].read_bytes()).decode()
    return MaterializeResult(metadata={"figure": MetadataValue.md(f"![training curves](data:image/png;base64,{png})"),
                                       "png": MetadataValue.path(str(paths["png"])),
                                       "html": MetadataValue.path(str(paths["html"]))})
