"""The team and cluster profiles, for real on this machine: a throwaway Postgres, dagster-daemon and the webserver
(team); plus Redis, two dagster-celery workers and an S3-compatible server (cluster). Every server is started and
stopped by the test."""

import time

import pandas as pd
import pytest
from dagster import AssetKey, DagsterRunStatus, RunsFilter

from agreemate_assets.deploy.stack import Stack

pytestmark = pytest.mark.serial  # scripts/test.sh runs these alone, after the parallel part

RB_ROSTER = """agents:
  - {id: rb, backend: rule-based, model: rule-based}
  - {id: rb-slow, backend: rule-based, model: rule-based, beta: 0.3}
  - {id: rb-fast, backend: rule-based, model: rule-based, beta: 0.8}
"""
PAIRS = [("rb", "rb-slow"), ("rb-slow", "rb"), ("rb-fast", "rb"), ("rb", "rb-fast")]
DIMS = ["buyer", "seller"]  # the pair partitions' dimensions, in key order


def _materialized_once(instance, keys: list[str]) -> dict[str, int]:
    """How many materializations of negotiation_transcripts each partition has in the instance."""
    from dagster import AssetRecordsFilter

    recs = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey("negotiation_transcripts"),
                                                              asset_partitions=keys), limit=1000).records
    counts = {k: 0 for k in keys}
    for r in recs:
        counts[r.partition_key] += 1
    return counts


@pytest.mark.slow
def test_team_profile_main_job_through_the_daemon(tmp_path, monkeypatch):
    """Postgres instance storage; the main job submits its jobs and one backfill of the pairs to the queue; the
    daemon runs them (each run in its own process); the metrics table and the instance agree; nothing is left
    running after the stack stops."""
    from agreemate_assets.lib.resources import StudySettings
    from agreemate_assets.study import submit_study

    roster = tmp_path / "agents.yaml"
    roster.write_text(RB_ROSTER)
    study = {"n_scenarios": 3, "max_turns": 8, "roster_path": str(roster)}
    with Stack("team", tmp_path / "team", results=str(tmp_path / "results"), study=study) as stack:
        stack.apply_env(monkeypatch.setenv)
        instance = stack.instance()
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        pairs = PAIRS[:2]
        results = submit_study(stack.deployment(timeout_s=600), StudySettings(**study), pairs, log=print)
        assert results.ok, results.failures
        keys = [f"{b}|{s}" for b, s in pairs]
        assert _materialized_once(instance, keys) == {k: 1 for k in keys}
        runs = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.SUCCESS]))
        assert len(runs) >= 1 + 2 + 2 + len(pairs) + 1  # setup, 2 buyer + 2 seller configs, pairs, metrics
        table = pd.read_parquet(tmp_path / "results" / "metrics_by_negotiation.parquet")
        assert sorted(set(table["pair"])) == sorted(f"{b}+{s}" for b, s in pairs) and len(table) == 3 * len(pairs)

    assert stack.leftovers() == []


@pytest.mark.slow
def test_cluster_profile_survives_a_killed_worker(tmp_path, monkeypatch):
    """Postgres, Redis, an S3 server and two celery workers: the study's pairs as one backfill through the daemon
    (setup and configs done in this process on the same instance and object store: the team test covers them
    through the daemon), whose steps run on the workers and whose results go to s3://. One worker is SIGKILLed in the
    middle of a
    negotiation step: the step goes back to the queue (late acknowledgement, visibility timeout) and the other worker
    runs it; every partition is materialized exactly once, and its table is in the object store. Then Postgres
    restarts in the middle of a run; the next runs work; nothing is left running after the stack stops."""
    import re
    import threading

    from agreemate_assets.lib.resources import StudySettings

    roster = tmp_path / "agents.yaml"
    roster.write_text(RB_ROSTER)
    study = {"n_scenarios": 3, "max_turns": 8, "roster_path": str(roster)}
    with Stack("cluster", tmp_path / "cluster", study=study, visibility_timeout_s=10, inference_slots=2) as stack:
        stack.apply_env(monkeypatch.setenv)
        assert stack.results.startswith("s3://")
        killed: dict = {}

        def kill_first_worker_in_a_negotiation_step():
            """SIGKILL worker1 (and its step) as soon as it has started a negotiation_transcripts step."""
            log = stack.log("worker1")
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                text = log.read_text(errors="replace") if log.is_file() else ""
                if re.search(r"negotiation_transcripts - STEP_START", text):
                    received = re.findall(r"Task \S+\[([0-9a-f-]+)\] received", text)
                    done = set(re.findall(r"Task \S+\[([0-9a-f-]+)\] succeeded", text))
                    stack.workers[0].kill()
                    killed["tasks"] = [t for t in received if t not in done]
                    return
                time.sleep(0.02)

        from agreemate_assets.definitions import definitions_for
        from agreemate_assets.lib.resources import build_resources

        instance = stack.instance()
        project = definitions_for(build_resources(StudySettings(results_dir=stack.results, **study)))
        assert project.resolve_job_def("study_setup").execute_in_process(instance=instance).success
        for job, agents in (("buyer_config", {b for b, _ in PAIRS}), ("seller_config", {s for _, s in PAIRS})):
            for agent in sorted(agents):
                assert project.resolve_job_def(job).execute_in_process(instance=instance, partition_key=agent).success
        killer = threading.Thread(target=kill_first_worker_in_a_negotiation_step, daemon=True)
        killer.start()
        dep = stack.deployment(timeout_s=900)
        keys = [f"{b}|{s}" for b, s in PAIRS]
        sub = dep.backfill(["negotiation_transcripts", "negotiation_metrics"], keys, "pairs")
        killer.join(5)
        assert killed.get("tasks"), "worker1 never started a negotiation step"
        assert sub.ok, sub.status_by_partition
        assert dep.run_job("study_metrics").ok
        other = stack.log("worker2").read_text(errors="replace")
        assert any(re.search(rf"Task \S+\[{t}\] succeeded", other) for t in killed["tasks"]), \
            "the killed worker's step was not run by the other worker"
        assert _materialized_once(instance, keys) == {k: 1 for k in keys}
        from upath import UPath

        stored = sorted(str(p) for p in UPath(f"{stack.results}/negotiation_transcripts").rglob("*.parquet"))
        assert len(stored) == len(PAIRS)
        table = pd.read_parquet(f"{stack.results}/metrics_by_negotiation.parquet")
        assert len(table) == 3 * len(PAIRS)

        # Postgres restarts while a pair's run is going: the run ends (succeeded, or failed and then retried by the
        # run-retry daemon), nothing is left STARTED or QUEUED, and the next run works.
        extra = "rb-fast|rb-slow"
        done: dict = {}
        t = threading.Thread(target=lambda: done.update(sub=dep.run_job("study_pair", [extra], dimensions=DIMS)),
                             daemon=True)
        t.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not instance.get_run_records(
                RunsFilter(tags={"dagster/partition": extra}, statuses=[DagsterRunStatus.STARTED])):
            time.sleep(0.1)
        stack.postgres.restart()
        t.join(600)
        assert "sub" in done, "the run did not end after the restart"
        active = [DagsterRunStatus.STARTED, DagsterRunStatus.QUEUED, DagsterRunStatus.STARTING]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and instance.get_run_records(RunsFilter(statuses=active)):
            time.sleep(1)  # a retry of the failed run may still be going
        assert not instance.get_run_records(RunsFilter(statuses=active))
        assert done["sub"].status_by_partition[extra] in ("SUCCESS", "FAILURE")
        assert dep.run_job("study_pair", [extra], dimensions=DIMS).ok
        assert dep.run_job("study_metrics").ok
    assert stack.leftovers() == []
