"""The roster sensor evaluated as Dagster evaluates it (evaluate_tick: run requests resolved against their jobs)
on a real instance, with the roster as cloned."""

from dagster import DagsterInstance, build_sensor_context
from dagster._core.definitions.partitions.context import partition_loading_context

from agreemate_lib.negotiation.roster import load_roster


def _tick(instance, study):
    from agreemate_assets.definitions import defs
    from agreemate_assets.defs.negotiation.sensors import roster_sensor

    ctx = build_sensor_context(instance=instance, resources={"study": study}, definitions=defs)
    with partition_loading_context(dynamic_partitions_store=instance):
        return roster_sensor.evaluate_tick(ctx)


def test_roster_sensor_on_the_cloned_roster(dagster_home):
    from agreemate_assets.lib.resources import StudySettings

    study = StudySettings()
    agents = sorted(load_roster(study.roster_file()))
    with DagsterInstance.get() as instance:
        first = _tick(instance, study)  # a new instance: every enabled agent is registered, nothing runs yet
        adds = {r.partitions_def_name: sorted(r.partition_keys) for r in first.dynamic_partitions_requests}
        assert adds == {"buyer_agents": agents, "seller_agents": agents} and not first.run_requests
        for r in first.dynamic_partitions_requests:
            instance.add_dynamic_partitions(r.partitions_def_name, list(r.partition_keys))
        second = _tick(instance, study)  # then each agent's two config runs, resolved against their jobs
        assert {(r.job_name, r.partition_key) for r in second.run_requests} == {
            (job, a) for a in agents for job in ("buyer_config", "seller_config")}
        assert not second.dynamic_partitions_requests
