"""The preference step as assets: the fine-tuned pair's self-play on listings it was trained on, then one DPO adapter
per role against its own words-vs-price contradictions (agreemate_lib/training/preference.py)."""

import math

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    Config,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    Output,
    StaticPartitionsDefinition,
    asset,
)
from pydantic import Field

from agreemate_lib.training.preference import PreferenceConfig

from ...lib.resources import InferenceServer, ResultsStore, StudySettings
from ..negotiation.assets import INFERENCE_POOL, INFERENCE_QUEUE, checkpoint_path, pair_agents
from .assets import CODE_VERSION, SPLIT_KEYS, adapter_checks

#: The roles a preference step trains (the generalist plays both: its pairs would mix two prompts' behaviour).
preference_role_partitions = StaticPartitionsDefinition(["buyer", "seller"])


def dpo_folder_name(role: str) -> str:
    """The folder of a role's preference adapter, shipped (``adapters/<model>/<role>-dpo``) and rebuilt alike."""
    return f"{role}-dpo"


class SelfPlay(Config):
    """Who plays whom, on which listings. The defaults are the run the shipped preference adapters were trained on
    (their manifests' ``self_play``): the supervised pair on 240 listings of the test split (seed 3), whose dialogues
    are in the role splits' training data, so the pairs never come from an evaluation or validation listing."""

    buyer: str = Field(default="smollm2-ft-buyer", description="roster id of the buyer")
    seller: str = Field(default="smollm2-ft-seller", description="roster id of the seller")
    split: str = Field(default="test", description="dataset split the listings are drawn from")
    scenarios: int = 240
    seed: int = Field(default=3, description="the listings' sample and the runner's seed, as `agreemate negotiate "
                                             "--seed`")
    max_turns: int = 15


@asset(group_name="training", code_version=CODE_VERSION, kinds={"pytorch", "parquet"}, pool=INFERENCE_POOL,
       op_tags={"dagster-celery/queue": INFERENCE_QUEUE},
       check_specs=[AssetCheckSpec("on_trained_listings", asset="self_play_transcripts", blocking=True,
                                   description="no negotiation on an evaluation (the paper's 30) or held-out "
                                               "validation listing; how many are on listings the adapters trained on")],
       description="The fine-tuned buyer against the fine-tuned seller on listings whose dialogues they were "
                   "trained on: the replies the preference step learns from. One parquet row per turn.")
def self_play_transcripts(context: AssetExecutionContext, study: StudySettings, inference_server: InferenceServer,
                          config: SelfPlay):
    import time

    from agreemate_lib.core.io import frame_version
    from agreemate_lib.core.records import negotiations_to_frame
    from agreemate_lib.core.scenarios import study_scenarios
    from agreemate_lib.evaluation.paper import paper_scenarios_keys
    from agreemate_lib.negotiation.roster import load_roster
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations
    from agreemate_lib.training.splits import listing_key, project_role_splits, trained_listing_keys

    roster = load_roster(study.roster_file(), include_disabled=True)
    missing = [a for a in (config.buyer, config.seller) if a not in roster]
    if missing:
        raise ValueError(f"self-play agents {missing} are not in the roster {study.roster_file()}")
    sset = study_scenarios(config.split, config.scenarios, config.seed, source=study.source())
    cfg = RunConfig(max_turns=config.max_turns, seed=config.seed, mode=study.runner_mode)
    buyer, seller, _ = pair_agents(study, inference_server, roster[config.buyer], roster[config.seller],
                                   log=context.log.warning)
    ckpt = checkpoint_path(study, f"self-play.{config.buyer}", f"{config.seller}.{config.split}.{config.seed}")
    t0 = time.perf_counter()
    progress: dict = {}
    negs = run_negotiations(sset.scenarios, buyer, seller, cfg, checkpoint=ckpt, log=context.log.warning,
                            stats=progress)
    df = negotiations_to_frame(negs)
    errors = [n.negotiation_id for n in negs if n.outcome == "error"]
    yield Output(df, data_version=DataVersion(frame_version(df)), metadata={
        "negotiations": len(negs), "turns": len(df), "errors": len(errors),
        "error_examples": MetadataValue.json(errors[:5]),  # left out of the pairs; rerun the asset to retry them
        "agreement_rate": sum(n.agreed for n in negs) / max(1, len(negs) - len(errors)),
        "negotiations_from_checkpoint": progress.get("resumed", 0), "wall_s": round(time.perf_counter() - t0, 1),
        "config": MetadataValue.json(config.model_dump())})
    ckpt.unlink(missing_ok=True)

    splits = project_role_splits(study.source(), study.seed)["generalist"]
    validation = set(splits.loc[splits["split"] == "validation", "listing_key"])
    trained = trained_listing_keys(study.source(), study.seed)
    paper = paper_scenarios_keys()
    rows = pd.DataFrame([{"negotiation_id": n.negotiation_id, "title": n.scenario.get("title", ""),
                          "listing_key": listing_key(n.scenario.get("title", ""))} for n in negs])
    leaks = rows[rows["listing_key"].isin(paper | validation)] if len(rows) else rows
    on_trained = int(rows["listing_key"].isin(trained).sum()) if len(rows) else 0
    yield AssetCheckResult(check_name="on_trained_listings", passed=len(rows) > 0 and not len(leaks),
                           severity=AssetCheckSeverity.ERROR, metadata={
                               "negotiations": len(rows), "on_trained_listings": on_trained,
                               "on_evaluation_or_validation_listings": len(leaks),
                               "examples": MetadataValue.json(leaks.head(5).to_dict("records"))})


class PreferenceTraining(PreferenceConfig, Config):
    """The preference_adapters run config: :class:`PreferenceConfig` (defaults: the shipped preference adapters'
    settings), where an empty ``init_from`` is the role's shipped supervised adapter; ``reproduce_shipped``: the
    shipped preference adapter's own config from its manifest, without its wall-clock budget (the shipped runs ended
    after all their epochs, not on it), starting from the adapter its manifest names, checked by digest."""

    init_from: str = ""
    max_minutes: float = 40.0
    reproduce_shipped: bool = False


def preference_config(config: PreferenceTraining, role: str) -> PreferenceConfig:
    """The settings one preference_adapters partition trains with."""
    from agreemate_lib.core.settings import repo_root
    from agreemate_lib.training.shipping import read_manifest, shipped_adapter_dir

    if config.reproduce_shipped:
        folder = shipped_adapter_dir(config.model, dpo_folder_name(role))
        manifest = read_manifest(folder)
        if manifest is None:
            raise FileNotFoundError(f"reproduce_shipped: no manifest.json in {folder}")
        return PreferenceConfig(**manifest["training_config"] | {
            "max_minutes": 0, "init_digest": manifest["metrics"]["initialized_from_digest"]})
    fields = config.model_dump(exclude={"reproduce_shipped"})
    if not fields["init_from"]:
        fields["init_from"] = str(shipped_adapter_dir(config.model, role).relative_to(repo_root()))
    return PreferenceConfig(**fields)


@asset(group_name="training", partitions_def=preference_role_partitions, code_version=CODE_VERSION,
       kinds={"pytorch", "safetensors"},
       ins={"self_play_transcripts": AssetIn("self_play_transcripts")} | {r: AssetIn(SPLIT_KEYS[r])
                                                                           for r in ("buyer", "seller")},
       check_specs=[AssetCheckSpec("prefers_chosen", asset="preference_adapters",
                                   description="held-out pairs: the chosen reply more likely than the rejected one, "
                                               "relative to the starting adapter, in most pairs (accuracy > 0.5)"),
                    AssetCheckSpec("beats_base_model", asset="preference_adapters",
                                   description="held-out perplexity of the role's human turns still at least 30% "
                                               "below the base model's (the CI's lower end above 0)"),
                    AssetCheckSpec("matches_shipped", asset="preference_adapters",
                                   description="the rebuilt adapter equals the one shipped under adapters/"),
                    AssetCheckSpec("replies_parse", asset="preference_adapters", blocking=True)],
       description="A role adapter after a preference step (DPO) against its own words-vs-price contradictions in "
                   "self-play: safetensors, manifest, the pairs and the curves.")
def preference_adapters(context: AssetExecutionContext, study: StudySettings, results_store: ResultsStore,
                        config: PreferenceTraining, self_play_transcripts: pd.DataFrame, **splits: pd.DataFrame):
    from agreemate_lib.core.io import frame_version
    from agreemate_lib.core.records import frame_to_negotiations
    from agreemate_lib.negotiation.roster import load_roster
    from agreemate_lib.training.preference import prefer
    from agreemate_lib.training.shipping import compare_with_shipped, shipped_adapter_dir
    from agreemate_lib.training.splits import trained_listing_keys

    role = context.partition_key
    cfg = preference_config(config, role)
    out = results_store.local_dir("adapters", dpo_folder_name(role))
    r = prefer(frame_to_negotiations(self_play_transcripts), role,
               load_roster(study.roster_file(), include_disabled=True), splits[role], out, cfg,
               listings=trained_listing_keys(study.source(), study.seed),
               sources=[{"asset": "self_play_transcripts", "data_version": frame_version(self_play_transcripts)}],
               log=context.log.info)
    m, manifest = r["metrics"], r["manifest"]
    same = compare_with_shipped(out, shipped_adapter_dir(cfg.model, dpo_folder_name(role)))
    scalars = {k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in m.items()
               if not isinstance(v, (dict, list))}
    yield MaterializeResult(data_version=DataVersion(manifest["digest"]), metadata={
        **scalars, "pair_counts": MetadataValue.json(r["counts"]), "digest": manifest["digest"],
        "initialized_from": cfg.init_from, "compared_with_shipped": MetadataValue.json(same),
        "path": MetadataValue.path(str(out))})
    yield AssetCheckResult(check_name="prefers_chosen", severity=AssetCheckSeverity.WARN,
                           passed=math.isfinite(m["validation_pair_loss"]) and m["validation_pair_accuracy"] > 0.5,
                           metadata={k: m[k] for k in ("validation_pair_accuracy", "validation_pair_loss",
                                                       "start_validation_loss", "validation_pairs", "train_pairs")})
    yield from adapter_checks(study, out, role, m, same)
