"""A Dagster partition run killed with SIGKILL mid-run, then run again: the pair's transcripts equal those of a run
that was never interrupted (sampled, fp32). Both runs are real `study_pair` runs in their own process against a
real instance; the kill lands between two checkpointed negotiations (one dialogue at a time)."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import kill_after_first_checkpoint

pytestmark = pytest.mark.slow

DRIVER = '''
import sys
from dagster import DagsterInstance
from agreemate_assets.definitions import definitions_for
from agreemate_assets.lib.resources import StudySettings, build_resources
from agreemate_assets.defs.negotiation.partitions import pair_key, register_agents

phase, results, roster = sys.argv[1:4]
study = StudySettings(results_dir=results, roster_path=roster, n_scenarios=3, max_turns=4, seed=3,
                      runner_mode="naive", response_cache=False)
project = definitions_for(build_resources(study))
with DagsterInstance.get() as instance:
    def run(job, key=None):
        res = project.resolve_job_def(job).execute_in_process(instance=instance, partition_key=key,
                                                              raise_on_error=False)
        assert res.success, job
    if phase == "setup":
        run("study_setup")
        register_agents(instance, ["s32"])
        run("buyer_config", "s32")
        run("seller_config", "s32")
    else:
        run("study_pair", pair_key("s32", "s32"))
'''


def test_sigkill_of_a_partition_run_then_rerun_equals_an_uninterrupted_run(tmp_path, data_dir):
    roster = tmp_path / "agents.yaml"
    roster.write_text(yaml.safe_dump({"agents": [{"id": "s32", "model": "smollm2", "dtype": "fp32",
                                                  "temperature": 0.7, "max_utterance_tokens": 16}]}))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    def env(name):
        home = tmp_path / f"home-{name}"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        return os.environ | {"DAGSTER_HOME": str(home), "OMP_NUM_THREADS": "1", "AGREEMATE_DATA_DIR": str(data_dir)}

    def cmd(phase, name):
        return [sys.executable, str(driver), phase, str(tmp_path / f"results-{name}"), str(roster)]

    def run(phase, name):
        done = subprocess.run(cmd(phase, name), env=env(name), capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]

    run("setup", "whole")
    run("pair", "whole")

    run("setup", "cut")
    ckpt = tmp_path / "results-cut" / "checkpoints" / "s32+s32.jsonl"
    saved = kill_after_first_checkpoint(cmd("pair", "cut"), env("cut"), ckpt)
    stored = list((tmp_path / "results-cut").rglob("negotiation_transcripts/**/*.parquet"))
    assert 1 <= saved < 3 and not stored  # killed mid-partition: some negotiations checkpointed, no table
    run("pair", "cut")

    a, b = (pd.read_parquet(next((tmp_path / f"results-{n}").rglob("negotiation_transcripts/**/*.parquet")))
            for n in ("whole", "cut"))
    cols = ["negotiation_id", "turn_index", "speaker", "action", "utterance", "price", "outcome", "accepted_price"]
    key = ["negotiation_id", "turn_index"]
    assert len(a) > 3
    pd.testing.assert_frame_equal(a[cols].sort_values(key).reset_index(drop=True),
                                  b[cols].sort_values(key).reset_index(drop=True))
    assert not ckpt.exists()  # the checkpoint goes once the partition's table is stored
