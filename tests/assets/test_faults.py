"""Faults driven through the real pipeline (the study's jobs into a temporary instance): a failure is never an
outcome, a blocking check fails on what the pipeline really produced, the metrics table does not move, the main job
says so and exits non-zero, and the cache never decides a result."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dagster import AssetKey, DagsterInstance

from tests.lib.backends.fake_openai_server import FakeOpenAI

pytestmark = pytest.mark.slow

OVERPAY_BACKEND = '''
import json
from agreemate_lib.backends.base import BackendConfig, ChatBackend, Completion


class OverpayBackend(ChatBackend):
    """A scripted buyer that offers 1.5 times the listing price: a deal no sane buyer makes."""

    name = "overpay"
    Config = BackendConfig
    needs_model = False

    @classmethod
    def from_spec(cls, spec, **_):
        return cls()

    def __init__(self):
        self.model_id = "overpay"

    def generate(self, requests, settings):
        out = []
        for r in requests:
            price = round(1.5 * r.context.view["listing_price"])
            reply = {"action": "offer", "utterance": f"I'll pay ${price}!", "price": price}
            out.append(Completion(json.dumps(reply), structured=True))
        return out
'''


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def env(tmp_path, dagster_home, data_dir, monkeypatch):
    from agreemate_lib.backends import registry

    (tmp_path / "overpay_backend.py").write_text(OVERPAY_BACKEND)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BACKENDS, "overpay", "overpay_backend:OverpayBackend")

    def make(extra_agents):
        from agreemate_assets.lib.resources import StudySettings

        roster = tmp_path / "agents.yaml"
        roster.write_text(yaml.safe_dump({"agents": [
            {"id": "rb-a", "backend": "rule-based", "beta": 0.5},
            {"id": "rb-b", "backend": "rule-based", "beta": 2.0},
            *extra_agents]}))
        return StudySettings(results_dir=str(tmp_path / "results"), roster_path=str(roster), n_scenarios=3,
                             max_turns=6)

    yield make


def _metrics(study) -> pd.DataFrame:
    return pd.read_parquet(Path(study.results_dir) / "metrics.parquet")


def _server_agent(agent_id, url, **kw):
    return {"id": agent_id, "backend": "openai", "model": "m", "base_url": url, "max_retries": 1,
            "timeout_s": 2.0, "turn_budget_s": 5.0, "response_format": "json_object", **kw}


def test_server_gone_mid_run_gives_errors_a_failed_check_and_unchanged_metrics(env):
    from agreemate_assets.study import run_study

    with FakeOpenAI(["ok"], die_after=2) as srv:  # answers twice, then goes away
        study = env([_server_agent("srv", srv.url)])
        with DagsterInstance.get() as instance:
            first = run_study(instance, study, [("rb-a", "rb-b")], log=lambda *_: None)
            assert first.ok
            before = _metrics(study)
            res = run_study(instance, study, [("srv", "rb-a")], log=lambda *_: None)
            assert not res["srv|rb-a"] and not res.ok
            assert any("transcripts_valid failed" in r and "error_rate" in r for _, r in res.failures), res.failures
            assert "srv|rb-a" not in instance.get_materialized_partitions(AssetKey("negotiation_metrics"))
    turns = pd.read_parquet(Path(study.results_dir) / "negotiation_transcripts" / "buyer=srv" / "seller=rb-a.parquet")
    outcomes = turns.groupby("negotiation_id")["outcome"].first()
    assert (outcomes == "error").any() and turns["backend_error"].any()
    assert turns.loc[turns["backend_error"], "error"].str.contains("ConnectError|turn budget|failed after").all()
    assert not (outcomes == "rejected").any()  # a dead server is not a rejected deal
    pd.testing.assert_frame_equal(_metrics(study), before)  # the table did not move


def test_garbage_replies_fail_the_blocking_check(env):
    from agreemate_assets.study import run_study

    with FakeOpenAI(["garbage"]) as srv:
        study = env([_server_agent("junk", srv.url)])
        with DagsterInstance.get() as instance:
            res = run_study(instance, study, [("junk", "rb-a")], log=lambda *_: None)
            assert not res["junk|rb-a"]
            reasons = " ".join(r for _, r in res.failures)
            assert "parse_failure_rate" in reasons
    turns = pd.read_parquet(Path(study.results_dir) / "negotiation_transcripts" / "buyer=junk" / "seller=rb-a.parquet")
    junk = turns[turns["speaker"] == "buyer"]
    assert not junk["parse_ok"].any() and junk["price"].isna().all()  # no price from a reply that is no turn
    assert (turns.groupby("negotiation_id")["outcome"].first() != "accepted").all()


def test_overpaying_buyer_warns_but_is_scored(env):
    from agreemate_assets.study import run_study

    study = env([{"id": "overpay", "backend": "overpay"}])
    with DagsterInstance.get() as instance:
        res = run_study(instance, study, [("overpay", "rb-a")], log=lambda *_: None)
        assert res["overpay|rb-a"]  # behaviour is a warning, not a failure
        rec = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [_check_key("transcripts_behaviour")])[_check_key("transcripts_behaviour")]
        ev = rec.event.dagster_event.event_specific_data
        assert not ev.passed and ev.severity.value == "WARN" and rec.partition == "overpay|rb-a"
        assert ev.metadata["measures"].value["buyer_paid_above_listing"] == 3
    assert list(_metrics(study)["pair"]) == ["overpay+rb-a"]


def test_a_price_misread_from_the_words_blocks_a_stated_one_warns(env):
    """A server whose offer leaves the price field empty and names a model number in its words: the parser's reading
    (a price far above the band) is a fault, the pair is not scored. A server that states $1 in its price field: a bad
    offer the model chose, scored with a warning."""
    from agreemate_assets.study import run_study

    misread = {"action": "offer", "utterance": "It fits my Model 99999 rack.", "price": None}
    with FakeOpenAI(["ok"], reply=misread) as srv:
        study = env([_server_agent("misread", srv.url)])
        with DagsterInstance.get() as instance:
            res = run_study(instance, study, [("misread", "rb-a")], log=lambda *_: None)
            assert not res["misread|rb-a"]
            assert any("implausible_price_rate" in r for _, r in res.failures), res.failures
    turns = pd.read_parquet(Path(study.results_dir) / "negotiation_transcripts" / "buyer=misread" /
                            "seller=rb-a.parquet")
    mine = turns[turns["speaker"] == "buyer"]
    assert mine["price_from_words"].all() and (mine["price"] == 99999).all()

    lowball = {"action": "offer", "utterance": "I can pay a dollar.", "price": 1}
    with FakeOpenAI(["ok"], reply=lowball) as srv:
        study = env([_server_agent("lowball", srv.url)])
        with DagsterInstance.get() as instance:
            res = run_study(instance, study, [("lowball", "rb-a")], log=lambda *_: None)
            assert res["lowball|rb-a"], res.failures  # the model's own bad offer is a result
            key = _check_key("transcripts_behaviour")
            ev = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key] \
                .event.dagster_event.event_specific_data
            assert not ev.passed and ev.severity.value == "WARN"
            assert ev.metadata["measures"].value["implausible_stated_price_rate"] > 0.05
    assert "lowball+rb-a" in set(_metrics(study)["pair"])


def _check_key(name):
    from dagster import AssetCheckKey

    return AssetCheckKey(AssetKey("negotiation_transcripts"), name)


def test_corrupt_cache_file_is_set_aside_and_said(env):
    from agreemate_assets.study import run_study

    study = env([])
    results = Path(study.results_dir)
    results.mkdir(parents=True)
    (results / "response_cache.sqlite").write_bytes(b"this is not a database" * 100)
    with DagsterInstance.get() as instance:
        assert run_study(instance, study, [("rb-a", "rb-b")], log=lambda *_: None).ok
        md = instance.get_latest_materialization_event(AssetKey("negotiation_transcripts")).asset_materialization
    events = md.metadata["response_cache_events"].value
    assert events and "set aside" in events[0]
    assert list(results.glob("response_cache.sqlite.corrupt-*"))


def test_cache_write_failure_loses_nothing(env, monkeypatch):
    """Writes to the cache fail (simulated: SQLite opens it read-only, as on a full or read-only disk): the run
    finishes, its tables are stored, the failure is reported."""
    import sqlite3

    from agreemate_assets.study import run_study
    from agreemate_lib.backends import cache as cache_module

    study = env([])
    Path(study.results_dir).mkdir(parents=True)
    cache_module.ResponseCache(Path(study.results_dir) / "response_cache.sqlite")  # an existing, healthy cache

    def read_only(self):
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=60)

    monkeypatch.setattr(cache_module.ResponseCache, "_connect", read_only)
    with DagsterInstance.get() as instance:
        assert run_study(instance, study, [("rb-a", "rb-b")], log=lambda *_: None).ok
        md = instance.get_latest_materialization_event(AssetKey("negotiation_transcripts")).asset_materialization
    events = md.metadata["response_cache_events"].value
    assert any("could not store" in e and "readonly" in e for e in events), events
    assert len(pd.read_parquet(Path(study.results_dir) / "metrics_by_negotiation.parquet")) == 3
    assert sqlite3.connect(Path(study.results_dir) / "response_cache.sqlite").execute(
        "SELECT COUNT(*) FROM responses").fetchone()[0] == 0


def test_main_job_exits_non_zero_and_says_what_failed(tmp_path, data_dir):
    """The main job itself (a subprocess, as `bash scripts/main.sh` runs it) on a roster with a dead server."""
    roster = tmp_path / "agents.yaml"
    roster.write_text(yaml.safe_dump({"agents": [
        {"id": "rb", "backend": "rule-based"},
        _server_agent("dead", f"http://127.0.0.1:{_closed_port()}/v1")]}))
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = os.environ | {"DAGSTER_HOME": str(home), "AGREEMATE_ROSTER": str(roster),
                        "AGREEMATE_RESULTS_DIR": str(tmp_path / "results")}
    out = subprocess.run([sys.executable, "-m", "agreemate_assets.study", "--pairs", "rb|rb", "dead|rb",
                          "--scenarios", "2", "--max-turns", "4", "--no-report"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAILED" in out.stderr and "dead|rb" in out.stderr and "error_rate" in out.stderr
    assert "rb+rb" in out.stdout and "dead+rb" not in out.stdout  # the table shows only what passed
