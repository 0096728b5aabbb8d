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


def test_removing_and_disabling_agents(tmp_path, dagster_home, data_dir):
    """Disable one agent, remove another from the roster file: the sensor deletes the removed agent's partitions,
    nothing left raises, and the metrics leave both agents' pairs out, saying why."""
    import pandas as pd
    import yaml
    from dagster import AssetKey

    from agreemate_assets.definitions import definitions_for
    from agreemate_assets.lib.resources import StudySettings, build_resources
    from agreemate_assets.study import run_study

    roster = tmp_path / "agents.yaml"
    agents = [{"id": f"rb-{x}", "backend": "rule-based", "beta": b} for x, b in (("a", 0.5), ("b", 1.0), ("c", 2.0))]
    roster.write_text(yaml.safe_dump({"agents": agents}))
    study = StudySettings(results_dir=str(tmp_path / "r"), roster_path=str(roster), n_scenarios=2, max_turns=6)
    grid = [("rb-a", "rb-b"), ("rb-b", "rb-c"), ("rb-c", "rb-a")]
    with DagsterInstance.get() as instance:
        assert run_study(instance, study, grid, log=lambda *_: None).ok
        agents[1]["enabled"] = False  # rb-b disabled
        roster.write_text(yaml.safe_dump({"agents": [agents[0], agents[1]]}))  # rb-c removed
        tick = _tick(instance, study)
        deletes = {(r.partitions_def_name, tuple(r.partition_keys)) for r in tick.dynamic_partitions_requests}
        assert deletes == {("buyer_agents", ("rb-c",)), ("seller_agents", ("rb-c",))}
        for r in tick.dynamic_partitions_requests:
            for key in r.partition_keys:
                instance.delete_dynamic_partition(r.partitions_def_name, key)
        project = definitions_for(build_resources(study))
        res = project.resolve_job_def("study_metrics").execute_in_process(instance=instance, raise_on_error=False)
        assert res.success
        md = instance.get_latest_materialization_event(AssetKey("metrics_by_negotiation")).asset_materialization
        left = {x["pair"]: x["reason"] for x in md.metadata["left_out_pairs"].value}
        # rb-b's pair is stored but left out; rb-c's partitions are gone, so its pairs are no longer inputs at all
        assert left == {"rb-a|rb-b": "rb-b is not an enabled agent of the roster"}
        assert pd.read_parquet(tmp_path / "r" / "metrics.parquet").empty


def test_roster_sensor_through_the_daemon(tmp_path, data_dir):
    """The real path: `dagster sensor start`, then `dagster-daemon run` ticks the sensor on its own schedule,
    registers the roster's agents, and its run requests go through the run queue and materialize each agent's
    config partitions. Every tick must succeed or skip; none may fail."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from dagster import AssetKey, DagsterRunStatus, RunsFilter
    from dagster._core.scheduler.instigation import TickStatus

    from tests.conftest import ROOT

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    roster = tmp_path / "agents.yaml"
    roster.write_text(yaml.safe_dump({"agents": [{"id": "rb-a", "backend": "rule-based"},
                                                 {"id": "rb-b", "backend": "rule-based", "beta": 2.0}]}))
    env = os.environ | {"DAGSTER_HOME": str(home), "AGREEMATE_ROSTER": str(roster),
                        "AGREEMATE_RESULTS_DIR": str(tmp_path / "results"), "AGREEMATE_DATA_DIR": str(data_dir),
                        "OMP_NUM_THREADS": "1"}
    bindir = os.path.dirname(sys.executable)
    workspace = ["-w", str(ROOT / "workspace.yaml")]
    subprocess.run([f"{bindir}/dagster", "sensor", "start", "roster_sensor", *workspace], env=env, cwd=ROOT,
                   check=True, capture_output=True, timeout=120)
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([f"{bindir}/dagster-daemon", "run", *workspace], env=env, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from dagster import DagsterInstance

        deadline = time.time() + 240
        with DagsterInstance.from_config(str(home)) as instance:
            done = False
            while time.time() < deadline and not done:
                time.sleep(3)
                runs = instance.get_runs(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
                done = {r.job_name for r in runs} >= {"buyer_config", "seller_config"} and len(runs) >= 4
            ticks = [t for s in instance.all_instigator_state() for t in instance.get_ticks(s.instigator_origin_id,
                                                                                              s.selector_id)]
            assert ticks, "the daemon never ticked the sensor"
            failed = [t.error.message for t in ticks if t.status == TickStatus.FAILURE]
            assert not failed, failed
            assert done, (tmp_path / "daemon.log").read_text()[-3000:]
            assert sorted(instance.get_dynamic_partitions("buyer_agents")) == ["rb-a", "rb-b"]
            for key in ("buyer_agent_config", "seller_agent_config"):
                mats = instance.get_materialized_partitions(AssetKey(key))
                assert mats == {"rb-a", "rb-b"}, (key, mats)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        log.close()
