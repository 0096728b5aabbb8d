"""The roster sensor: agents added to the roster file become partitions; changed agents get their config
rematerialized (which makes exactly their pairs stale and, with automation on, re-runs them); agents removed from
the file lose their partitions (disabled ones keep them; the metrics leave their pairs out)."""


from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    AssetRecordsFilter,
    DeleteDynamicPartitionsRequest,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from agreemate_lib.negotiation.roster import RosterError, load_roster

from ...lib.resources import StudySettings
from ..jobs import buyer_config_job, seller_config_job
from .partitions import missing_agents, removed_agents


def latest_config_hash(instance, asset: str, agent_id: str) -> str | None:
    result = instance.fetch_materializations(AssetRecordsFilter(AssetKey(asset), asset_partitions=[agent_id]), limit=1)
    if not result.records or result.records[0].asset_materialization is None:
        return None
    meta = result.records[0].asset_materialization.metadata.get("config_hash")
    return None if meta is None else str(meta.value)


def plan_roster_sync(instance, study: StudySettings) -> tuple[dict[str, list[str]], list[str], dict[str, list[str]]]:
    """(agents to add, per dynamic partition set; agents whose config must be rematerialized; agents removed from
    the roster file, per partition set)."""
    roster = load_roster(study.roster_file())
    new = missing_agents(instance, list(roster))
    gone = removed_agents(instance, list(load_roster(study.roster_file(), include_disabled=True)))
    changed = []
    for agent_id, spec in roster.items():
        h = spec.config_hash()
        if any(latest_config_hash(instance, asset, agent_id) != h for asset in ("buyer_agent_config",
                                                                             "seller_agent_config")):
            changed.append(agent_id)
    return new, changed, gone


@sensor(minimum_interval_seconds=30, jobs=[buyer_config_job, seller_config_job],
        description="Adds roster agents as partitions; refreshes changed agent configs.")
def roster_sensor(context: SensorEvaluationContext, study: StudySettings):
    try:
        new, changed, gone = plan_roster_sync(context.instance, study)
    except RosterError as exc:
        return SkipReason(f"roster not usable: {exc}")
    if not new and not changed and not gone:
        return SkipReason("roster unchanged")
    # The two config assets live on two partition sets: one run each per changed agent.
    # New agents are registered by this tick and get their configs on the next one (a run request may only name
    # partitions that already exist when the tick is evaluated).
    fresh = {a for ids in new.values() for a in ids}
    runs = [RunRequest(run_key=None, partition_key=a, job_name=job.name, tags={"agreemate/reason": "roster change"})
            for a in changed if a not in fresh for job in (buyer_config_job, seller_config_job)]
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(name, ids) for name, ids in new.items()]
        + [DeleteDynamicPartitionsRequest(name, ids) for name, ids in gone.items()],
    )
