"""Negotiation assets: the roster, one config asset per agent, transcripts per model pair."""

import time

import pandas as pd
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AutomationCondition,
    DataVersion,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    Output,
    asset,
)

from agreemate_lib.backends.registry import make_backend
from agreemate_lib.core.io import frame_version
from agreemate_lib.core.records import negotiations_to_frame
from agreemate_lib.core.scenarios import Scenario
from agreemate_lib.negotiation.agents import Agent, AgentSpec
from agreemate_lib.negotiation.roster import load_roster
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

from ...lib.metadata import md_table, transcript_markdown
from ...lib.resources import InferenceServer, StudySettings
from ...lib.versions import source_version
from .checks import TRANSCRIPT_CHECKS, validate_transcripts
from .partitions import (
    buyer_agents_partitions,
    pair_partitions,
    register_agents,
    seller_agents_partitions,
    unregister_agents,
)

#: Derived from the source that defines these assets (see agreemate_assets/lib/versions.py).
CODE_VERSION = source_version(
    __name__, "agreemate_lib.core", "agreemate_lib.negotiation", "agreemate_lib.backends")


@asset(group_name="negotiation", code_version=CODE_VERSION, kinds={"yaml", "parquet"},
       description="The agents declared in the roster file, with the content hash of each one's full config. "
                   "Materializing it registers every agent as a partition.")
def agent_roster(context: AssetExecutionContext, study: StudySettings) -> Output[pd.DataFrame]:
    roster = load_roster(study.roster_file())
    rows = [{"id": a.id, "backend": a.backend, "model": a.model, "adapter": a.adapter, "personality": a.personality,
             "cot": a.cot, "temperature": a.temperature, "config_hash": a.config_hash()} for a in roster.values()]
    df = pd.DataFrame(rows)
    new = register_agents(context.instance, list(roster))
    removed = unregister_agents(context.instance, list(load_roster(study.roster_file(), include_disabled=True)))
    return Output(df, metadata={"agents": len(df), "new_partitions": MetadataValue.json(new),
                                "removed_partitions": MetadataValue.json(removed),
                                "roster_file": str(study.roster_file()), "table": MetadataValue.md(md_table(df))})


def _agent_config(context: AssetExecutionContext, study: StudySettings) -> Output[dict]:
    agent_id = context.partition_key
    roster = load_roster(study.roster_file(), include_disabled=True)
    if agent_id not in roster:
        raise ValueError(f"agent {agent_id!r} is a partition but not in the roster {study.roster_file()}; "
                         "add it back or delete the partition")
    spec = roster[agent_id]
    digest = spec.config_hash()
    return Output(spec.model_dump() | {"config_hash": digest}, data_version=DataVersion(digest),
                  metadata={"config_hash": digest, "backend": spec.backend, "model": spec.model,
                            "config": MetadataValue.json(spec.model_dump())})


@asset(group_name="negotiation", partitions_def=buyer_agents_partitions, deps=[agent_roster], code_version=CODE_VERSION,
       io_manager_key="json_io_manager", kinds={"json"},
       description="One agent's config as a buyer. Its data version is the config's content hash, so only the "
                   "transcripts of pairs with this buyer become stale when it changes.")
def buyer_agent_config(context: AssetExecutionContext, study: StudySettings) -> Output[dict]:
    return _agent_config(context, study)


@asset(group_name="negotiation", partitions_def=seller_agents_partitions, deps=[agent_roster],
       code_version=CODE_VERSION,
       io_manager_key="json_io_manager", kinds={"json"},
       description="One agent's config as a seller (see buyer_agent_config).")
def seller_agent_config(context: AssetExecutionContext, study: StudySettings) -> Output[dict]:
    return _agent_config(context, study)


def agent_spec(config: dict) -> AgentSpec:
    return AgentSpec(**{k: v for k, v in config.items() if k != "config_hash"})


def scenario_records(frame: pd.DataFrame) -> tuple[list[Scenario], dict]:
    """The scenarios asset's table as typed scenarios, and the run settings it carries."""
    import json

    run_settings = json.loads(frame["run_settings"].iloc[0])
    fields = Scenario.__dataclass_fields__
    return [Scenario(**{k: r[k] for k in fields}) for r in frame.to_dict("records")], run_settings


def run_config(study: StudySettings, run_settings: dict) -> RunConfig:
    """The runner's settings: the scenarios asset's run settings and the study's runner mode."""
    return RunConfig(max_turns=run_settings["max_turns"], buyer_opens=run_settings["buyer_opens"],
                     seed=run_settings["seed"], replicates=run_settings["replicates"], mode=study.runner_mode)


def pair_agents(study: StudySettings, server: InferenceServer, buyer_spec: AgentSpec, seller_spec: AgentSpec,
                log=None) -> tuple[Agent, Agent, object]:
    """A pair's two agents on their backends (one backend when they share weights), each behind the study's
    response cache when it is on; returns (buyer, seller, cache or None)."""
    cache = None
    if study.response_cache:
        from agreemate_lib.backends.cache import CachedBackend, ResponseCache

        cache = ResponseCache(study.work_path() / "response_cache.sqlite", log=log)

    def cached(spec: AgentSpec, backend):
        return CachedBackend(backend, cache, namespace=spec.config_hash()) if cache is not None else backend

    buyer_backend = make_backend(buyer_spec, api_key=server.api_key or None)
    seller_backend = buyer_backend if buyer_spec.shares_weights_with(seller_spec) else \
        make_backend(seller_spec, api_key=server.api_key or None)
    return Agent(buyer_spec, cached(buyer_spec, buyer_backend)), Agent(seller_spec, cached(seller_spec,
                                                                                          seller_backend)), cache


def checkpoint_path(study: StudySettings, buyer_id: str, seller_id: str):
    """Where a pair's finished negotiations are appended while it runs (removed once its table is stored)."""
    return study.work_path() / "checkpoints" / f"{buyer_id}+{seller_id}.jsonl"


#: Every transcript partition stored so far, as one input of a downstream asset (pairs not negotiated are skipped).
ALL_TRANSCRIPTS = AssetIn("negotiation_transcripts", metadata={"allow_missing_partitions": True})


def all_turns(transcripts: dict[str, pd.DataFrame], scored: pd.DataFrame | None = None) -> pd.DataFrame:
    """The stored transcripts as one table; with ``scored`` (the ``metrics_by_negotiation`` table), only the
    negotiations it scores, so a pair left out of the metrics (failed check, stale, not in the roster) is left out
    of every figure, the report and probing too."""
    frames = [transcripts[k] for k in sorted(transcripts)]
    turns = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if scored is not None and len(turns):
        keep = set(scored["negotiation_id"]) if len(scored) else set()
        turns = turns[turns["negotiation_id"].isin(keep)].reset_index(drop=True)
    return turns


TRANSCRIPTS_AUTOMATION = AutomationCondition.eager()
#: The concurrency pool and the celery queue of the steps that run a model (see docs/deploy.md).
INFERENCE_POOL = "inference"
INFERENCE_QUEUE = "inference"
# A pair's buyer config maps to the pair's "buyer" dimension, its seller config to the "seller" dimension.
BY_BUYER = MultiToSingleDimensionPartitionMapping(partition_dimension_name="buyer")
BY_SELLER = MultiToSingleDimensionPartitionMapping(partition_dimension_name="seller")


@asset(
    group_name="negotiation",
    partitions_def=pair_partitions,
    ins={
        "scenarios": AssetIn("scenarios"),
        "buyer_config": AssetIn("buyer_agent_config", partition_mapping=BY_BUYER),
        "seller_config": AssetIn("seller_agent_config", partition_mapping=BY_SELLER),
    },
    check_specs=TRANSCRIPT_CHECKS,
    automation_condition=TRANSCRIPTS_AUTOMATION,
    code_version=CODE_VERSION,
    kinds={"pytorch", "parquet"},
    # The inference step: the "inference" pool caps how many run at once across all runs (one per CPU box or GPU:
    # docs/deploy.md); on the cluster profile, dagster-celery routes it to the workers that serve "inference".
    pool=INFERENCE_POOL,
    op_tags={"dagster-celery/queue": INFERENCE_QUEUE},
    description="Every scenario negotiated by one buyer agent and one seller agent: one parquet row per turn.",
)
def negotiation_transcripts(context: AssetExecutionContext, study: StudySettings, inference_server: InferenceServer,
                            scenarios: pd.DataFrame, buyer_config: dict, seller_config: dict):
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    buyer_id, seller_id = keys["buyer"], keys["seller"]
    buyer_spec, seller_spec = agent_spec(buyer_config), agent_spec(seller_config)
    scen, run_settings = scenario_records(scenarios)
    cfg = run_config(study, run_settings)

    from agreemate_lib.negotiation.estimates import estimate_workload

    estimate = estimate_workload(scen, buyer_spec, seller_spec, cfg)
    context.log.info(f"estimate (upper bounds) for {buyer_id}|{seller_id}: {estimate}")
    t0 = time.perf_counter()
    buyer, seller, cache = pair_agents(study, inference_server, buyer_spec, seller_spec, log=context.log.warning)
    ckpt = checkpoint_path(study, buyer_id, seller_id)
    progress: dict = {}
    negs = run_negotiations(scen, buyer, seller, cfg, checkpoint=ckpt, log=context.log.warning, stats=progress)
    wall = time.perf_counter() - t0
    df = negotiations_to_frame(negs)
    # provenance in every row: what these negotiations were produced from (metrics use it to leave stale pairs out)
    df["buyer_config_hash"] = buyer_spec.config_hash()
    df["seller_config_hash"] = seller_spec.config_hash()
    df["scenarios_version"] = frame_version(scenarios)

    turns = len(df)
    agreed = sum(n.agreed for n in negs)
    errors = sum(n.outcome == "error" for n in negs)
    parse_fail = int((~df["parse_ok"]).sum()) if turns else 0
    preview = ""
    if negs and negs[0].turns:
        first = df[df["negotiation_id"] == negs[0].negotiation_id]
        preview = transcript_markdown(first, negs[0].scenario.get("title", ""))
    cache_stats = {b.id: (getattr(b.backend, "hits", None), getattr(b.backend, "misses", None))
                   for b in (buyer, seller)}
    yield Output(df, metadata={
        "negotiations": len(negs),
        "turns": turns,
        "error_rate": errors / max(1, len(negs)),
        "agreement_rate": agreed / max(1, len(negs) - errors),  # over negotiations that ended with a result
        "parse_failure_rate": parse_fail / max(1, turns),
        "fallback_rate": float((~df["structured"]).mean()) if turns else 0.0,
        "tokens_in": int(df["tokens_in"].sum()) if turns else 0,
        "tokens_out": int(df["tokens_out"].sum()) if turns else 0,
        "wall_s": round(wall, 2),
        # finished negotiations taken from this pair's checkpoint (same agents, settings and scenarios): an
        # interrupted run, or the main job's shared batch across pairs (agreemate_assets/study.py)
        "negotiations_from_checkpoint": progress.get("resumed", 0),
        "response_cache_hits_misses": MetadataValue.json(cache_stats),
        "response_cache_events": MetadataValue.json(cache.events if cache is not None else []),
        "estimate_upper_bounds": MetadataValue.json(estimate),
        "preview": MetadataValue.md(preview or "(no turns)"),
    })
    # The checkpoint goes once the partition's table is stored (the IO manager ran when Output was yielded).
    ckpt.unlink(missing_ok=True)
    yield from validate_transcripts(df, max_turns=cfg.max_turns)
