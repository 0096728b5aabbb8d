"""The Dagster project: real materializations into a temporary DAGSTER_HOME, real GX checks, automation."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from dagster import AssetCheckKey, AssetKey, AssetSelection, DagsterInstance, build_sensor_context, materialize

pytestmark = pytest.mark.slow

ROSTER = {
    "agents": [
        {"id": "rb-a", "backend": "rule-based", "model": "rule-based", "beta": 0.5},
        {"id": "rb-b", "backend": "rule-based", "model": "rule-based", "beta": 1.0},
        {"id": "rb-c", "backend": "rule-based", "model": "rule-based", "beta": 2.0},
        {"id": "tiny", "backend": "transformers", "model": "smollm2", "temperature": 0.0,
         "max_utterance_tokens": 16},
    ]
}


def _env(tmp_path):
    roster = tmp_path / "agents.yaml"
    roster.write_text(yaml.safe_dump(ROSTER))
    from agreemate_assets.lib.resources import StudySettings

    study = StudySettings(results_dir=str(tmp_path / "results"), roster_path=str(roster), n_scenarios=2,
                          max_turns=4, seed=0)
    return DagsterInstance.get(), study, roster


@pytest.fixture()
def env(tmp_path, any_dagster_home, data_dir):
    """The study's roster and settings on a fresh instance: SQLite, then Postgres (the same test twice)."""
    instance, study, roster = _env(tmp_path)
    with instance:
        yield instance, study, roster


@pytest.fixture()
def env_sqlite(tmp_path, dagster_home, data_dir):
    instance, study, roster = _env(tmp_path)
    with instance:
        yield instance, study, roster


def mat(instance, study, selection, partition_key=None):
    from agreemate_assets.definitions import defs
    from agreemate_assets.lib.resources import build_resources

    return materialize(list(defs.assets) + list(defs.asset_checks), selection=selection, partition_key=partition_key,
                       instance=instance, resources=build_resources(study), raise_on_error=False)


def check_passed(instance, asset, check, partition=None):
    rec = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [AssetCheckKey(AssetKey(asset), check)]).get(AssetCheckKey(AssetKey(asset), check))
    return rec.event.dagster_event.event_specific_data.passed if rec and rec.event else None


def test_definitions_load():
    from agreemate_assets.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"craigslist_raw", "scenarios", "agent_roster", "buyer_agent_config", "seller_agent_config",
            "negotiation_transcripts", "negotiation_metrics", "metrics"} <= keys
    graph = defs.resolve_asset_graph()
    groups = {graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert {"data", "negotiation", "evaluation"} <= groups


def test_study_materializes_pairs_and_metrics(env):
    from agreemate_assets.study import run_study

    instance, study, _ = env
    results = run_study(instance, study, [("rb-a", "rb-b"), ("tiny", "rb-a")], log=lambda *_: None,
                        pairs_at_once=0)
    assert all(results.values()), results
    # the partition files exist and hold turns from real negotiations
    t = pd.read_parquet(Path(study.results_dir) / "negotiation_transcripts" / "buyer=tiny" / "seller=rb-a.parquet")
    assert t["negotiation_id"].nunique() == 2 and t["parse_ok"].all() and (t["tokens_out"] > 0).any()
    table = pd.read_parquet(Path(study.results_dir) / "metrics.parquet")
    assert set(table["pair"]) == {"rb-a+rb-b", "tiny+rb-a"}
    assert {"agreement_rate_ci_low", "fairness_ci_high"} <= set(table.columns)
    for asset, check in [("scenarios", "prices_positive"), ("scenarios", "ids_unique"),
                         ("negotiation_transcripts", "transcripts_valid"), ("metrics", "agreement_rate_is_a_rate")]:
        assert check_passed(instance, asset, check) is True, (asset, check)
    mats = instance.get_materialized_partitions(AssetKey("negotiation_metrics"))
    assert mats == {"rb-a|rb-b", "tiny|rb-a"}
    # metadata a person reads in the UI
    ev = instance.get_latest_materialization_event(AssetKey("negotiation_transcripts"))
    md = ev.asset_materialization.metadata
    assert {"negotiations", "agreement_rate", "parse_failure_rate", "tokens_out", "wall_s", "preview"} <= set(md)
    # both pairs were negotiated at once ahead of their runs, which took them from their checkpoints
    from dagster import AssetRecordsFilter

    for key in ("rb-a|rb-b", "tiny|rb-a"):
        rec = instance.fetch_materializations(AssetRecordsFilter(AssetKey("negotiation_transcripts"),
                                                                 asset_partitions=[key]), limit=1).records[0]
        assert rec.asset_materialization.metadata["negotiations_from_checkpoint"].value == 2, key
    assert not list((Path(study.results_dir) / "checkpoints").glob("*.jsonl"))  # removed once stored
    # a rerun regenerates nothing: every reply comes from the response cache
    res = mat(instance, study, AssetSelection.assets("negotiation_transcripts"), "tiny|rb-a")
    assert res.success
    ev = instance.get_latest_materialization_event(AssetKey("negotiation_transcripts"))
    hits, misses = ev.asset_materialization.metadata["response_cache_hits_misses"].value["tiny"]
    assert misses == 0 and hits > 0
    assert ev.asset_materialization.metadata["negotiations_from_checkpoint"].value == 0  # negotiated by its run


def test_roster_changes_touch_only_their_partitions(env_sqlite):
    from dagster import evaluate_automation_conditions

    from agreemate_assets.definitions import defs
    from agreemate_assets.defs.negotiation.partitions import pair_partitions
    from agreemate_assets.defs.negotiation.sensors import roster_sensor
    from agreemate_assets.study import run_study

    instance, study, roster = env_sqlite
    doc = yaml.safe_load(roster.read_text())
    doc["agents"] = doc["agents"][:3]  # the three rule-based agents
    roster.write_text(yaml.safe_dump(doc))
    grid = [(b, s) for b in ("rb-a", "rb-b", "rb-c") for s in ("rb-a", "rb-b", "rb-c")]
    assert all(run_study(instance, study, grid, log=lambda *_: None).values())
    assert len(pair_partitions.get_partition_keys(dynamic_partitions_store=instance)) == 9

    sel = AssetSelection.assets("negotiation_transcripts")
    first = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=sel)
    assert first.get_requested_partitions(AssetKey("negotiation_transcripts")) == set()

    def sensor_tick():
        ctx = build_sensor_context(instance=instance, resources={"study": study})
        return roster_sensor(ctx)

    # nothing changed: the sensor skips
    from dagster import SkipReason

    assert isinstance(sensor_tick(), SkipReason)

    # change one agent: only its configs are re-run, and only its pairs are requested
    doc["agents"][1]["beta"] = 3.0
    roster.write_text(yaml.safe_dump(doc))
    result = sensor_tick()
    assert {r.partition_key for r in result.run_requests} == {"rb-b"}
    assert not result.dynamic_partitions_requests
    for asset in ("buyer_agent_config", "seller_agent_config"):
        assert mat(instance, study, AssetSelection.assets(asset), "rb-b").success
    second = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=sel, cursor=first.cursor)
    requested = {str(k) for k in second.get_requested_partitions(AssetKey("negotiation_transcripts"))}
    assert requested == {f"{b}|{s}" for b, s in grid if "rb-b" in (b, s)}

    # add an agent: exactly its row and column appear
    doc["agents"].append({"id": "rb-d", "backend": "rule-based", "model": "rule-based", "beta": 0.3})
    roster.write_text(yaml.safe_dump(doc))
    before = set(pair_partitions.get_partition_keys(dynamic_partitions_store=instance))
    result = sensor_tick()
    adds = {(r.partitions_def_name, tuple(r.partition_keys)) for r in result.dynamic_partitions_requests}
    assert adds == {("buyer_agents", ("rb-d",)), ("seller_agents", ("rb-d",))}
    for r in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(r.partitions_def_name, list(r.partition_keys))
    after = set(pair_partitions.get_partition_keys(dynamic_partitions_store=instance))
    assert {str(k) for k in after - before} == {f"rb-d|{x}" for x in ("rb-a", "rb-b", "rb-c", "rb-d")} | {
        f"{x}|rb-d" for x in ("rb-a", "rb-b", "rb-c")}
    # registering again is idempotent
    from agreemate_assets.defs.negotiation.partitions import register_agents

    assert register_agents(instance, ["rb-a", "rb-d"]) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_dev_serves_graphql(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    exe = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen([str(exe), "dev", "-h", "127.0.0.1", "-p", str(port), "-m", "agreemate_assets"],
                            env=os.environ | {"DAGSTER_HOME": str(home)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp_path)
    try:
        body = json.dumps({"query": "{ version assetNodes { assetKey { path } } }"}).encode()
        deadline = time.time() + 90
        data = None
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body,
                                             {"Content-Type": "application/json"})
                data = json.loads(urllib.request.urlopen(req, timeout=5).read())
                if data.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                time.sleep(1)
        assert data and data["data"]["version"], data
        paths = {"/".join(n["assetKey"]["path"]) for n in data["data"]["assetNodes"]}
        assert {"negotiation_transcripts", "metrics", "scenarios"} <= paths
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def test_metrics_materializes_on_a_fresh_instance(env):
    instance, study, _ = env
    res = mat(instance, study, AssetSelection.assets("scenarios", "metrics_by_negotiation", "metrics")
              | AssetSelection.checks_for_assets("metrics"))
    assert res.success
    assert pd.read_parquet(Path(study.results_dir) / "metrics.parquet").empty
    assert check_passed(instance, "metrics", "agreement_rate_is_a_rate") is True


@pytest.mark.slow
def test_training_assets_materialize_with_their_checks(env_sqlite, tmp_path, data_dir):
    """role_splits (with the tagger's measured accuracy and the no-leakage contract), then one lora_adapters
    partition with a tiny config: a manifest, checks that ran, and a rebuild that says it differs from the shipped
    adapter. Then the preference step on the same splits: the shipped supervised pair's self-play (short: 24
    listings, 2 turns) on listings it trained on, and a few real DPO steps of the buyer adapter on its own
    contradicting replies there: a manifest that names the starting adapter, pairs only from trained listings, the
    chosen replies gaining on the rejected ones, checks that ran."""
    from agreemate_assets.definitions import defs
    from agreemate_assets.lib.resources import StudySettings, build_resources
    from agreemate_lib.core.settings import repo_root
    from agreemate_lib.training.shipping import adapter_digest, shipped_adapter_dir
    from agreemate_lib.training.splits import trained_listing_keys

    instance, _, _ = env_sqlite
    study = StudySettings(results_dir=str(tmp_path / "results"), roster_path=str(repo_root() / "agents.yaml"))
    splits = ["buyer_split", "seller_split", "generalist_split"]
    assert mat(instance, study, splits).success
    for key in splits:
        assert check_passed(instance, key, "split_contract") is True
    md = instance.get_latest_materialization_event(AssetKey("buyer_split")).asset_materialization.metadata
    assert md["tagger_accuracy_confident_turns"].value > 0.85 and md["dialogues"].value > 1000
    tiny = {"max_steps": 2, "micro_batch": 1, "grad_accum": 1, "train_examples": 2, "val_examples": 2,
            "final_eval_dialogues": 2, "eval_every": 1, "max_minutes": 0}
    res = materialize(list(defs.assets) + list(defs.asset_checks), selection=["lora_adapters"], partition_key="buyer",
                      instance=instance, resources=build_resources(study), raise_on_error=False,
                      run_config={"ops": {"lora_adapters": {"config": tiny}}})
    assert res.success
    out = tmp_path / "results" / "adapters" / "buyer"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training_config"]["max_steps"] == 2 and manifest["role"] == "buyer"
    assert check_passed(instance, "lora_adapters", "loss_finite", "buyer") is True
    assert check_passed(instance, "lora_adapters", "replies_parse", "buyer") is True
    assert check_passed(instance, "lora_adapters", "matches_shipped", "buyer") is False  # 2 steps: not the shipped one
    md = instance.get_latest_materialization_event(AssetKey("lora_adapters")).asset_materialization.metadata
    assert md["digest"].value == manifest["digest"]
    assert md["compared_with_shipped"].value["identical"] is False

    def run(selection, config, partition_key=None):
        return materialize(list(defs.assets) + list(defs.asset_checks), selection=selection,
                           partition_key=partition_key, instance=instance, resources=build_resources(study),
                           raise_on_error=False, run_config={"ops": {selection[0]: {"config": config}}})

    assert run(["self_play_transcripts"], {"scenarios": 24, "seed": 5, "max_turns": 2}).success
    assert check_passed(instance, "self_play_transcripts", "on_trained_listings") is True
    md = instance.get_latest_materialization_event(AssetKey("self_play_transcripts")).asset_materialization.metadata
    assert md["negotiations"].value == 24 and md["errors"].value == 0
    tiny = {"epochs": 2, "grad_accum": 1, "eval_every": 1, "patience": 10, "lr": 5e-4, "final_eval_dialogues": 2,
            "anchor_dialogues": 1, "anchor_validation_dialogues": 1, "validation_fraction": 0.5, "threads": 1}
    res = run(["preference_adapters"], tiny, partition_key="buyer")
    assert res.success
    out = tmp_path / "results" / "adapters" / "buyer-dpo"
    manifest = json.loads((out / "manifest.json").read_text())
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert len(pairs) >= 2 and set(pairs["role"]) == {"buyer"}
    assert set(pairs["listing_key"]) <= trained_listing_keys(str(data_dir / "craigslist_bargains"))
    assert manifest["training_config"]["init_from"] == "adapters/smollm2/buyer"
    assert manifest["previous"]["digest"] == manifest["metrics"]["initialized_from_digest"] == \
        adapter_digest(shipped_adapter_dir("smollm2", "buyer"))
    assert manifest["metrics"]["start_validation_accuracy"] == 0.0  # the reference is the start: logits all 0
    curves = pd.read_parquet(out / "curves.parquet")
    assert curves["mean_logit"].iloc[-1] > 0 and curves["anchor_loss"].notna().all()
    md = instance.get_latest_materialization_event(AssetKey("preference_adapters")).asset_materialization.metadata
    assert md["digest"].value == manifest["digest"] and md["pair_counts"].value["pairs"] == len(pairs)
    for check in ("prefers_chosen", "beats_base_model"):
        assert check_passed(instance, "preference_adapters", check, "buyer") is not None
    assert check_passed(instance, "preference_adapters", "replies_parse", "buyer") is True
    assert check_passed(instance, "preference_adapters", "matches_shipped", "buyer") is False


def test_reproducing_the_shipped_adapter_uses_its_manifest():
    """One run per budget the shipped adapter was trained over (its manifest chain, back to the base model or to a
    run that started from another adapter's weights, which the manifest names by path and digest), each for the
    steps it ran."""
    from agreemate_assets.defs.training.assets import AdapterTraining, training_configs
    from agreemate_lib.training.lora import run_folder
    from agreemate_lib.training.shipping import adapter_digest, read_manifest, shipped_adapter_dir

    chain = [read_manifest(shipped_adapter_dir("smollm2", "buyer"))]
    while chain[-1].get("previous") and not chain[-1]["training_config"].get("init_from"):
        chain.append(chain[-1]["previous"])
    stages = training_configs(AdapterTraining(reproduce_shipped=True), "buyer", seed=0)
    assert len(stages) == len(chain)
    skip = ("max_steps", "max_minutes", "resume_from")
    for cfg, m in zip(stages, reversed(chain)):
        assert cfg.max_steps == m["metrics"]["steps"] and cfg.max_minutes == 0  # steps, not the machine's speed
        dumped = cfg.model_dump()
        assert {k: dumped[k] for k in m["training_config"] if k not in skip} == {
            k: v for k, v in m["training_config"].items() if k not in skip}
    if stages[0].init_from:  # the starting weights are in the repository, as the manifest recorded them
        assert adapter_digest(run_folder(stages[0].init_from)) == chain[-1]["previous"]["digest"]
    assert training_configs(AdapterTraining(), "buyer", seed=3)[0].seed == 3


def test_reproducing_the_shipped_preference_adapter_uses_its_manifest():
    """The shipped preference adapter's own settings, without its wall-clock budget, from the adapter its manifest
    started from (checked by digest); by default a role starts from its shipped supervised adapter, named relative to
    the repository as the shipped manifests name it."""
    from agreemate_assets.defs.training.preference import PreferenceTraining, preference_config
    from agreemate_lib.training.lora import run_folder
    from agreemate_lib.training.shipping import adapter_digest, read_manifest, shipped_adapter_dir

    for role in ("buyer", "seller"):
        m = read_manifest(shipped_adapter_dir("smollm2", f"{role}-dpo"))
        cfg = preference_config(PreferenceTraining(reproduce_shipped=True), role)
        assert cfg.max_minutes == 0 and cfg.init_digest == m["metrics"]["initialized_from_digest"] == \
            adapter_digest(run_folder(cfg.init_from))
        dumped = cfg.model_dump()
        assert {k: dumped[k] for k in m["training_config"] if k not in ("max_minutes", "init_digest")} == {
            k: v for k, v in m["training_config"].items() if k not in ("max_minutes", "init_digest")}
        assert m["metrics"]["stop_reason"] == "all epochs"  # so no budget is needed for the same steps
        assert preference_config(PreferenceTraining(), role).init_from == f"adapters/smollm2/{role}"

