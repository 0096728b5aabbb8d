"""Resume and reproducibility: a checkpoint is reused only under the settings that wrote it; sampling is seeded per
negotiation and turn, so a killed-and-resumed run and a run with another batch composition give the transcripts of
an uninterrupted run."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from agreemate_lib.core.scenarios import make_scenario
from agreemate_lib.negotiation.agents import Agent, AgentSpec
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations
from tests.conftest import kill_after_first_checkpoint

ROOT = Path(__file__).resolve().parents[3]
SCEN = [make_scenario("test", i, title=f"Item {i}", description="d", category="bike", listing_price=100.0 + 10 * i,
                      buyer_target=70.0 + 5 * i, seller_target=100.0 + 10 * i) for i in range(4)]


def _rb(beta):
    return Agent(AgentSpec(id=f"rb{beta}", backend="rule-based", beta=beta))


def _summary(negs):
    return [(n.negotiation_id, n.outcome, n.accepted_price, [(t.action, t.price) for t in n.turns]) for n in negs]


def test_checkpoint_is_reused_only_under_its_own_settings(tmp_path):
    ckpt = tmp_path / "ckpt.jsonl"
    first = run_negotiations(SCEN, _rb(0.5), _rb(2.0), RunConfig(max_turns=8, seed=0), checkpoint=ckpt)
    # same settings: everything comes from the checkpoint, nothing is negotiated again
    ran = []
    again = run_negotiations(SCEN, _rb(0.5), _rb(2.0), RunConfig(max_turns=8, seed=0), checkpoint=ckpt,
                             on_finished=ran.append)
    assert ran == [] and _summary(again) == _summary(first)
    # another turn limit (or seed, or agent config): the old checkpoint is set aside, never reused
    notes = []
    changed = run_negotiations(SCEN, _rb(0.5), _rb(2.0), RunConfig(max_turns=3, seed=0), checkpoint=ckpt,
                               log=notes.append)
    assert notes and "set aside" in notes[0] and (tmp_path / "ckpt.jsonl.stale").is_file()
    assert all(len(n.turns) <= 3 for n in changed)
    fresh = run_negotiations(SCEN, _rb(0.5), _rb(2.0), RunConfig(max_turns=3, seed=0))
    assert _summary(changed) == _summary(fresh)
    notes.clear()
    other_agent = run_negotiations(SCEN, _rb(0.5), _rb(1.0), RunConfig(max_turns=3, seed=0), checkpoint=ckpt,
                                   log=notes.append)
    assert notes and _summary(other_agent) == _summary(run_negotiations(SCEN, _rb(0.5), _rb(1.0),
                                                                       RunConfig(max_turns=3, seed=0)))


@pytest.mark.slow
def test_sampling_does_not_depend_on_the_batch(smollm2_fp32):
    """Sampled (temperature 0.7) in fp32: all negotiations in one lockstep batch, or one at a time, give the same
    transcripts, because each reply is sampled with its own seed."""
    spec = AgentSpec(id="s", temperature=0.7, max_utterance_tokens=16, dtype="fp32")
    a = Agent(spec, smollm2_fp32)
    batched = run_negotiations(SCEN[:3], a, a, RunConfig(max_turns=3, seed=5))
    naive = run_negotiations(SCEN[:3], a, a, RunConfig(max_turns=3, seed=5, mode="naive"))
    assert _summary(batched) == _summary(naive)
    other_seed = run_negotiations(SCEN[:3], a, a, RunConfig(max_turns=3, seed=6))
    assert _summary(other_seed) != _summary(batched)  # the seed matters


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, data_dir):
    """`agreemate negotiate` killed with SIGKILL mid-run, then run again on the same folder: the transcripts equal
    those of a run that was never interrupted (sampled, fp32). One dialogue at a time (naive mode), so the kill
    lands between two checkpointed negotiations; batch independence is the test above."""
    roster = tmp_path / "agents.yaml"
    roster.write_text(yaml.safe_dump({"agents": [{"id": "s32", "model": "smollm2", "dtype": "fp32",
                                                  "temperature": 0.7, "max_utterance_tokens": 16}]}))

    def cmd(out):
        return [sys.executable, "-m", "agreemate_lib.cli.main", "negotiate", "--buyer", "s32", "--seller", "s32",
                "--roster", str(roster), "--scenarios", "3", "--max-turns", "4", "--seed", "3", "--quiet",
                "--mode", "naive", "--out", str(out)]

    env = os.environ | {"OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(cmd(whole), check=True, env=env, capture_output=True, timeout=900)

    cut = tmp_path / "cut"
    saved = kill_after_first_checkpoint(cmd(cut), env, cut / "checkpoint.jsonl")
    assert 1 <= saved < 3 and not (cut / "transcripts.parquet").exists()
    subprocess.run(cmd(cut), check=True, env=env, capture_output=True, timeout=900)

    a, b = (pd.read_parquet(d / "transcripts.parquet") for d in (whole, cut))
    cols = ["negotiation_id", "turn_index", "speaker", "action", "utterance", "price", "outcome", "accepted_price"]
    key = ["negotiation_id", "turn_index"]
    pd.testing.assert_frame_equal(a[cols].sort_values(key).reset_index(drop=True),
                                  b[cols].sort_values(key).reset_index(drop=True))
