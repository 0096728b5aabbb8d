"""The roster sensor: agents added to the roster file become partitions; changed agents get their config
rematerialized (which makes exactly their pairs stale and, with automation on, re-runs them)."""


from dagster import (
    AddDynamicPartitionsRequest,
    AssetKey,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from agreemate_lib.roster import RosterError, load_roster

from .partitions import agents_partitions
from .resources import StudySettings


def latest_config_hash(instance, asset: str, agent_id: str) -> str | None:
    ev = instance.get_latest_materialization_event(AssetKey(asset), partition=agent_id) \
        if hasattr(instance, "get_latest_materialization_event") else None
    if ev is None or ev.asset_materialization is None:
        return None
    meta = ev.asset_materialization.metadata.get("config_hash")
    return None if meta is None else str(meta.value)


def plan_roster_sync(instance, study: StudySettings) -> tuple[list[str], list[str]]:
    """(agents to add as partitions, agents whose config must be rematerialized)."""
    roster = load_roster(study.roster_file())
    existing = set(instance.get_dynamic_partitions(agents_partitions.name))
    new = [a for a in roster if a not in existing]
    changed = []
    for agent_id, spec in roster.items():
        h = spec.config_hash()
        if any(latest_config_hash(instance, asset, agent_id) != h for asset in ("buyer_agent_config",
                                                                             "seller_agent_config")):
            changed.append(agent_id)
    return new, changed


@sensor(minimum_interval_seconds=30, description="Adds roster agents as partitions; refreshes changed agent configs.")
def roster_sensor(context: SensorEvaluationContext, study: StudySettings):
    try:
        new, changed = plan_roster_sync(context.instance, study)
    except RosterError as exc:
        return SkipReason(f"roster not usable: {exc}")
    if not new and not changed:
        return SkipReason("roster unchanged")
    runs = [RunRequest(run_key=None, partition_key=a,
                       asset_selection=[AssetKey("buyer_agent_config"), AssetKey("seller_agent_config")],
                       tags={"agreemate/reason": "roster change"}) for a in changed]
    return SensorResult(
        run_requests=runs,
        dynamic_partitions_requests=[AddDynamicPartitionsRequest(agents_partitions.name, new)] if new else [],
    )
