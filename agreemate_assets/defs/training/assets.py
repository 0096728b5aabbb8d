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
    DataVersion,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
    multi_asset,
    multi_asset_check,
)

from agreemate_lib.training.lora import LoraTrainConfig
from agreemate_lib.training.splits import ROLES, project_role_splits

from ...lib.gx import validate
from ...lib.resources import ResultsStore, StudySettings
from ...lib.versions import source_version
from .partitions import role_partitions

#: Derived from the source that defines these assets (see agreemate_assets/lib/versions.py).
CODE_VERSION = source_version(
    __name__, "agreemate_lib.core", "agreemate_lib.training", "agreemate_lib.backends", "agreemate_lib.negotiation")

SPLIT_KEYS = {role: f"{role}_split" for role in ROLES}


class AdapterTraining(LoraTrainConfig, Config):
    """The lora_adapters run config: :class:`LoraTrainConfig` (defaults: the shipped adapters' settings, up to an hour
    a role on 2 CPU cores; ``preset: full`` = paper scale on a GPU), plus ``reproduce_shipped``: train with the
    shipped adapter's own config from its manifest, for exactly the steps it ran (its wall-clock budget, which
    depends on the machine's speed, replaced by that step count); an adapter trained over several budgets (resumed
    runs) is rebuilt run by run, each resuming the one before, from the base model or, where the chain began with a
    run started from another adapter (``init_from``), from that adapter's weights (checked by digest)."""

    reproduce_shipped: bool = False


def training_configs(config: AdapterTraining, role: str, seed: int) -> list[LoraTrainConfig]:
    """The settings of the runs a lora_adapters materialization makes, in order: one run, or (``reproduce_shipped``)
    the shipped adapter's chain of runs (:func:`~agreemate_lib.training.lora.reproduction_stages`)."""
    from agreemate_lib.training.lora import reproduction_stages
    from agreemate_lib.training.shipping import read_manifest, shipped_adapter_dir

    if not config.reproduce_shipped:
        return [LoraTrainConfig(**config.model_dump(exclude={"reproduce_shipped"})).resolved(seed=seed)]
    folder = shipped_adapter_dir(config.model, role)
    manifest = read_manifest(folder)
    if manifest is None:
        raise FileNotFoundError(f"reproduce_shipped: no manifest.json in {folder}")
    return reproduction_stages(manifest)


def adapter_dir(store: ResultsStore, role: str) -> Path:
    return store.local_dir("adapters", role)


@multi_asset(outs={SPLIT_KEYS[r]: AssetOut(group_name="training", kinds={"pandas", "parquet"},
                                           code_version=CODE_VERSION,
                                           description=f"Training dialogues for the {r} adapter: one whole-dialogue "
                                                       "sequence per dialogue and role, the loss mask beside it")
                   for r in ROLES}, deps=["craigslist_raw"], can_subset=False)
def role_splits(context: AssetExecutionContext, study: StudySettings):
    from agreemate_lib.core.craigslist import iter_annotated_dialogues
    from agreemate_lib.core.io import frame_version
    from agreemate_lib.training.tagger import evaluate_tagger

    splits = project_role_splits(study.source(), study.seed)
    tagger = evaluate_tagger([(sc.listing_price, t) for _, sc, t in iter_annotated_dialogues("validation",
                                                                                            study.source())])
    per_act = {a: {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}
               for a, m in tagger["per_act"].items()}
    context.log.info(f"tagger on the annotated dialogues: accuracy {tagger['accuracy_confident']:.3f} on confident "
                     f"turns, price recall {tagger['price_recall']:.3f}")
    for role, df in splits.items():
        yield Output(df, output_name=SPLIT_KEYS[role], data_version=DataVersion(frame_version(df)), metadata={
            "dialogues": int(df["dialogue_id"].nunique()), "sequences": len(df),
            "target_turns": int(df["target_turns"].sum()),
            "by_split": MetadataValue.json(df["split"].value_counts().to_dict()),
            "by_source": MetadataValue.json(df["source"].value_counts().to_dict()),
            "by_labels": MetadataValue.json(df.groupby("labels")["target_turns"].sum().astype(int).to_dict()),
            "data_version": frame_version(df),
            "tagger_accuracy_confident_turns": round(tagger["accuracy_confident"], 4),
            "tagger_confident_share": round(tagger["confident_share"], 4),
            "tagger_price_recall": round(tagger["price_recall"], 4),
            "tagger_price_precision": round(tagger["price_precision"], 4),
            "tagger_per_act": MetadataValue.json(per_act)})


@multi_asset_check(specs=[AssetCheckSpec("split_contract", asset=SPLIT_KEYS[r], blocking=True) for r in ROLES],
                   ins={r: AssetIn(SPLIT_KEYS[r]) for r in ROLES})
def role_split_checks(**splits: pd.DataFrame):
    """Every target is a role turn in the agents' JSON with a known act; validation listings never in training; no
    evaluation listing (the paper's 30) anywhere."""
    import great_expectations.expectations as gxe

    from agreemate_lib.core.vocabulary import CHOOSABLE_ACTS
    from agreemate_lib.evaluation.paper import paper_scenarios_keys

    paper = paper_scenarios_keys()
    for role in ROLES:
        df = splits[role]
        rows = []
        for r in df.itertuples(index=False):
            msgs, mask = json.loads(r.messages), json.loads(r.train_mask)
            targets = [json.loads(m["content"]) for m, on in zip(msgs, mask) if on]
            rows.append({"example_id": r.example_id, "split": r.split, "listing_key": r.listing_key,
                         "mask_aligned": len(msgs) == len(mask) and all(
                             m["role"] == "assistant" for m, on in zip(msgs, mask) if on),
                         "targets_ok": all(list(t) == ["reasoning", "action", "utterance", "price"]
                                           and t["action"] in CHOOSABLE_ACTS for t in targets),
                         "evaluation_listing": r.listing_key in paper})
        t = pd.DataFrame(rows)
        val_listings = set(t.loc[t["split"] == "validation", "listing_key"])
        t["leaks"] = (t["split"] == "train") & t["listing_key"].isin(val_listings)
        outcomes = validate(t, [
            gxe.ExpectColumnValuesToBeInSet(column="mask_aligned", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="targets_ok", value_set=[True]),
            gxe.ExpectColumnValuesToBeInSet(column="leaks", value_set=[False]),
            gxe.ExpectColumnValuesToBeInSet(column="evaluation_listing", value_set=[False]),
            gxe.ExpectColumnValuesToBeUnique(column="example_id"),
        ], f"split_{role}", ["example_id", "split", "listing_key"])
        failed = [o for o in outcomes if not o.success]
        yield AssetCheckResult(check_name="split_contract", asset_key=SPLIT_KEYS[role], passed=not failed,
                               severity=AssetCheckSeverity.ERROR,
                               metadata={"sequences": len(t), "failed": MetadataValue.json(
                                   [f"{o.name}: {o.unexpected_count}" for o in failed]),
                                   "examples_failing": MetadataValue.json({o.name: o.examples for o in failed})})


@asset(group_name="training", partitions_def=role_partitions, code_version=CODE_VERSION,
       kinds={"pytorch", "safetensors"},
       ins={r: AssetIn(SPLIT_KEYS[r]) for r in ROLES},
       check_specs=[AssetCheckSpec("loss_finite", asset="lora_adapters", blocking=True),
                    AssetCheckSpec("beats_base_model", asset="lora_adapters",
                                   description="held-out perplexity of the role's turns at least 30% below the base "
                                               "model's (the CI's lower end above 0)"),
                    AssetCheckSpec("matches_shipped", asset="lora_adapters",
                                   description="the rebuilt adapter equals the one shipped under adapters/"),
                    AssetCheckSpec("replies_parse", asset="lora_adapters", blocking=True)],
       description="A LoRA adapter per role (buyer, seller, generalist) on the embedded model: safetensors, "
                   "training config, metrics and curves.")
def lora_adapters(context: AssetExecutionContext, study: StudySettings, results_store: ResultsStore,
                  config: AdapterTraining, **splits: pd.DataFrame):
    from agreemate_lib.core.io import frame_version
    from agreemate_lib.training.lora import check_resume_data, train_lora
    from agreemate_lib.training.shipping import compare_with_shipped, shipped_adapter_dir, write_manifest

    role = context.partition_key
    df = splits[role]
    stages = training_configs(config, role, study.seed)
    out = adapter_dir(results_store, role)
    previous = None
    for k, cfg in enumerate(stages):
        if previous is not None:  # a stage after the first resumes the one before, or starts from its weights
            cfg = cfg.model_copy(update={"init_from": str(previous), "init_digest": ""} if cfg.init_from
                                 else {"resume_from": str(previous)})
        check_resume_data(cfg, frame_version(df))
        last = k == len(stages) - 1
        dest = out if last else out.parent / f"{out.name}.run{k + 1}"
        if len(stages) > 1:
            context.log.info(f"run {k + 1} of {len(stages)}: {cfg.max_steps} steps in all")
        m = train_lora(df[df["split"] == "train"], df[df["split"] == "validation"], dest, cfg, log=context.log.info)
        manifest = write_manifest(dest, role=role, training_config=cfg.model_dump(),
                                  data_version=frame_version(df), metrics=m)
        previous = dest
    same = compare_with_shipped(out, shipped_adapter_dir(cfg.model, role))
    yield MaterializeResult(data_version=DataVersion(manifest["digest"]), metadata={
        **{k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in m.items()},
        "digest": manifest["digest"], "data_version": manifest["data_version"],
        "compared_with_shipped": MetadataValue.json(same), "path": MetadataValue.path(str(out))})
    yield AssetCheckResult(check_name="loss_finite", passed=all(math.isfinite(m[k]) for k in
                           ("train_loss_final", "validation_loss")), metadata={"validation_loss": m["validation_loss"]})
    yield from adapter_checks(study, out, role, m, same)


def adapter_checks(study: StudySettings, adapter: Path, role: str, m: dict, same: dict):
    """The checks every trained adapter gets: held-out perplexity against the base model, the rebuild against the
    shipped adapter (``compare_with_shipped``), and parseable replies."""
    yield AssetCheckResult(check_name="beats_base_model",
                           passed=m["perplexity_reduction"] >= 0.3 and m["perplexity_reduction_ci_low"] > 0,
                           severity=AssetCheckSeverity.WARN,
                           metadata={k: m[k] for k in ("validation_perplexity", "base_validation_perplexity",
                                                       "perplexity_reduction", "perplexity_reduction_ci_low",
                                                       "perplexity_reduction_ci_high", "validation_dialogues")})
    yield AssetCheckResult(check_name="matches_shipped", passed=bool(same.get("identical")),
                           severity=AssetCheckSeverity.WARN, metadata={k: MetadataValue.json(v) if isinstance(
                               v, (list, dict)) else v for k, v in same.items()})
    yield replies_parse_check(study, adapter, role)


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
