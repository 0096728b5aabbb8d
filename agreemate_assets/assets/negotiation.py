"""Negotiation assets: the roster, one config asset per agent, transcripts per model pair."""


import json
import os
import time
from pathlib import Path

import pandas as pd
from dagster import (
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AutomationCondition,
    DataVersion,
    MaterializeResult,
    MetadataValue,
    MultiToSingleDimensionPartitionMapping,
    asset,
)

from agreemate_lib.backends.registry import make_backend
from agreemate_lib.negotiation.agents import Agent, AgentSpec
from agreemate_lib.negotiation.roster import load_roster
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations
from agreemate_lib.core.scenarios import Scenario
from agreemate_lib.core.io import atomic_write_parquet, atomic_write_text
from agreemate_lib.core.records import negotiations_to_frame

from ..metadata import md_table, transcript_markdown
from ..partitions import buyer_agents_partitions, pair_partitions, register_agents, seller_agents_partitions
from ..resources import InferenceServer, StudySettings
from ..transcript_checks import TRANSCRIPT_CHECK_NAME, validate_transcripts
from .data import scenarios, scenarios_path


def agent_config_path(study: StudySettings, agent_id: str) -> Path:
    return study.results_path() / "agents" / f"{agent_id}.json"


def transcripts_path(study: StudySettings, buyer: str, seller: str) -> Path:
    return study.results_path() / "transcripts" / f"buyer={buyer}" / f"seller={seller}.parquet"


@asset(group_name="negotiation", code_version="1",
       description="The agents declared in the roster file, with the content hash of each one's full config. "
                   "Materializing it registers every agent as a partition.")
def agent_roster(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    roster = load_roster(study.roster_file())
    rows = [{"id": a.id, "backend": a.backend, "model": a.model, "adapter": a.adapter, "personality": a.personality,
             "cot": a.cot, "temperature": a.temperature, "config_hash": a.config_hash()} for a in roster.values()]
    df = pd.DataFrame(rows)
    path = atomic_write_parquet(df, study.results_path() / "agent_roster.parquet")
    new = register_agents(context.instance, list(roster))
    return MaterializeResult(metadata={"agents": len(df), "new_partitions": MetadataValue.json(new),
                                       "roster_file": str(study.roster_file()), "path": MetadataValue.path(str(path)),
                                       "table": MetadataValue.md(md_table(df))})


def _materialize_agent_config(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    agent_id = context.partition_key
    roster = load_roster(study.roster_file(), include_disabled=True)
    if agent_id not in roster:
        raise ValueError(f"agent {agent_id!r} is a partition but not in the roster {study.roster_file()}; "
                         "add it back or delete the partition")
    spec = roster[agent_id]
    digest = spec.config_hash()
    path = agent_config_path(study, agent_id)
    atomic_write_text(json.dumps(spec.model_dump() | {"config_hash": digest}, indent=2), path)
    return MaterializeResult(metadata={"config_hash": digest, "backend": spec.backend, "model": spec.model,
                                       "config": MetadataValue.json(spec.model_dump())},
                             data_version=DataVersion(digest))


@asset(group_name="negotiation", partitions_def=buyer_agents_partitions, deps=[agent_roster], code_version="1",
       description="One agent's config as a buyer. Its data version is the config's content hash, so only the "
                   "transcripts of pairs with this buyer become stale when it changes.")
def buyer_agent_config(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    return _materialize_agent_config(context, study)


@asset(group_name="negotiation", partitions_def=seller_agents_partitions, deps=[agent_roster], code_version="1",
       description="One agent's config as a seller (see buyer_agent_config).")
def seller_agent_config(context: AssetExecutionContext, study: StudySettings) -> MaterializeResult:
    return _materialize_agent_config(context, study)


def load_agent_spec(study: StudySettings, agent_id: str) -> AgentSpec:
    path = agent_config_path(study, agent_id)
    if not path.is_file():
        raise FileNotFoundError(f"agent config {path} missing: materialize buyer_agent_config/seller_agent_config "
                                f"partition {agent_id!r} first")
    data = json.loads(path.read_text())
    data.pop("config_hash", None)
    return AgentSpec(**data)


def load_scenarios(study: StudySettings) -> tuple[list[Scenario], dict]:
    df = pd.read_parquet(scenarios_path(study))
    run_settings = json.loads(df["run_settings"].iloc[0])
    fields = Scenario.__dataclass_fields__
    return [Scenario(**{k: r[k] for k in fields}) for r in df.to_dict("records")], run_settings


TRANSCRIPTS_AUTOMATION = AutomationCondition.eager()
# A pair's buyer config maps to the pair's "buyer" dimension, its seller config to the "seller" dimension.
BY_BUYER = MultiToSingleDimensionPartitionMapping(partition_dimension_name="buyer")
BY_SELLER = MultiToSingleDimensionPartitionMapping(partition_dimension_name="seller")


@asset(
    group_name="negotiation",
    partitions_def=pair_partitions,
    deps=[
        scenarios,
        AssetDep(buyer_agent_config, partition_mapping=BY_BUYER),
        AssetDep(seller_agent_config, partition_mapping=BY_SELLER),
    ],
    check_specs=[AssetCheckSpec(TRANSCRIPT_CHECK_NAME, asset="negotiation_transcripts", blocking=True,
                                description="GX: actions in the vocabulary, prices sane, deals priced, turn limit, "
                                            "parse failures below the threshold")],
    automation_condition=TRANSCRIPTS_AUTOMATION,
    code_version="1",
    description="Every scenario negotiated by one buyer agent and one seller agent: one parquet row per turn.",
)
def negotiation_transcripts(context: AssetExecutionContext, study: StudySettings, inference_server: InferenceServer):
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    buyer_id, seller_id = keys["buyer"], keys["seller"]
    buyer_spec, seller_spec = load_agent_spec(study, buyer_id), load_agent_spec(study, seller_id)
    scen, run_settings = load_scenarios(study)
    cfg = RunConfig(max_turns=run_settings["max_turns"], buyer_opens=run_settings["buyer_opens"],
                    seed=run_settings["seed"], replicates=run_settings["replicates"])

    def backend_for(spec: AgentSpec):
        if spec.backend == "openai" and inference_server.api_key:
            os.environ.setdefault(spec.api_key_env, inference_server.api_key)  # the key never enters a config
        backend = make_backend(spec)
        if study.response_cache:
            from agreemate_lib.backends.cache import CachedBackend, ResponseCache

            backend = CachedBackend(backend, ResponseCache(study.results_path() / "response_cache.sqlite"))
        return backend

    from agreemate_lib.negotiation.estimates import estimate_workload

    estimate = estimate_workload(scen, buyer_spec, seller_spec, cfg)
    context.log.info(f"estimate (upper bounds) for {buyer_id}|{seller_id}: {estimate}")
    t0 = time.perf_counter()
    buyer_backend = backend_for(buyer_spec)
    seller_backend = buyer_backend if buyer_spec.model_dump(exclude={"id", "personality", "cot", "notes"}) == \
        seller_spec.model_dump(exclude={"id", "personality", "cot", "notes"}) else backend_for(seller_spec)
    buyer, seller = Agent(buyer_spec, buyer_backend), Agent(seller_spec, seller_backend)
    ckpt = study.results_path() / "checkpoints" / f"{buyer_id}+{seller_id}.jsonl"
    negs = run_negotiations(scen, buyer, seller, cfg, checkpoint=ckpt)
    wall = time.perf_counter() - t0
    df = negotiations_to_frame(negs)
    path = atomic_write_parquet(df, transcripts_path(study, buyer_id, seller_id))
    ckpt.unlink(missing_ok=True)

    turns = len(df)
    agreed = sum(n.agreed for n in negs)
    parse_fail = int((~df["parse_ok"]).sum()) if turns else 0
    preview = ""
    if negs and negs[0].turns:
        first = df[df["negotiation_id"] == negs[0].negotiation_id]
        preview = transcript_markdown(first, negs[0].scenario.get("title", ""))
    cache = {b.id: (getattr(b.backend, "hits", None), getattr(b.backend, "misses", None)) for b in (buyer, seller)}
    yield MaterializeResult(
        metadata={
            "negotiations": len(negs),
            "turns": turns,
            "agreement_rate": agreed / max(1, len(negs)),
            "parse_failure_rate": parse_fail / max(1, turns),
            "fallback_rate": float((~df["structured"]).mean()) if turns else 0.0,
            "tokens_in": int(df["tokens_in"].sum()) if turns else 0,
            "tokens_out": int(df["tokens_out"].sum()) if turns else 0,
            "wall_s": round(wall, 2),
            "response_cache_hits_misses": MetadataValue.json(cache),
            "estimate_upper_bounds": MetadataValue.json(estimate),
            "path": MetadataValue.path(str(path)),
            "preview": MetadataValue.md(preview or "(no turns)"),
        }
    )
    yield validate_transcripts(df, max_turns=cfg.max_turns, warn_rate=study.parse_failure_warn_rate)
