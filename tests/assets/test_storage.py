"""Storage through IO managers on universal paths: the study's tables at a URL as well as in a local folder."""

import pandas as pd
import pytest
import yaml
from dagster import AssetKey, DagsterInstance

pytestmark = pytest.mark.slow

ROSTER = {"agents": [{"id": "rb-a", "backend": "rule-based", "beta": 0.5},
                     {"id": "rb-b", "backend": "rule-based", "beta": 2.0}]}


def _study(tmp_path, results_dir):
    from agreemate_assets.lib.resources import StudySettings

    roster = tmp_path / "agents.yaml"
    roster.write_text(yaml.safe_dump(ROSTER))
    return StudySettings(results_dir=results_dir, roster_path=str(roster), n_scenarios=3, max_turns=6)


def test_tables_at_an_object_store_url(tmp_path, dagster_home, data_dir):
    """memory:// stands in for s3://: every table of the negotiation chain is stored there and loaded from there;
    working state (response cache, checkpoints) stays in a local folder."""
    from upath import UPath

    from agreemate_assets.study import run_study

    url = f"memory://agreemate-{tmp_path.name}"
    study = _study(tmp_path, url)
    with DagsterInstance.get() as instance:
        assert all(run_study(instance, study, [("rb-a", "rb-b")], log=lambda *_: None).values())
        assert instance.get_materialized_partitions(AssetKey("negotiation_metrics")) == {"rb-a|rb-b"}
    root = UPath(url)
    with (root / "negotiation_transcripts" / "buyer=rb-a" / "seller=rb-b.parquet").open("rb") as fh:
        turns = pd.read_parquet(fh)
    with (root / "metrics.parquet").open("rb") as fh:
        table = pd.read_parquet(fh)
    assert turns["negotiation_id"].nunique() == 3 and list(table["pair"]) == ["rb-a+rb-b"]
    assert (root / "buyer_agent_config" / "rb-a.json").exists()
    assert study.work_path().is_dir() and not str(study.work_path()).startswith("memory")


def test_local_tables_are_named_by_partition_and_written_atomically(tmp_path, dagster_home, data_dir):
    from agreemate_assets.study import run_study

    results = tmp_path / "results"
    study = _study(tmp_path, str(results))
    with DagsterInstance.get() as instance:
        assert all(run_study(instance, study, [("rb-b", "rb-a")], log=lambda *_: None).values())
    files = sorted(p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file())
    assert "negotiation_transcripts/buyer=rb-b/seller=rb-a.parquet" in files
    assert "negotiation_metrics/buyer=rb-b/seller=rb-a.parquet" in files
    assert {"scenarios.parquet", "metrics.parquet", "metrics_by_negotiation.parquet"} <= set(files)
    assert not [f for f in files if f.endswith(".tmp")]  # no temporary file left behind
    # the folder reads back as one dataset, with the buyer folder as a partition column
    ds = pd.read_parquet(results / "negotiation_transcripts")
    assert set(ds["buyer"].astype(str)) == {"rb-b"} and set(ds["seller_id"]) == {"rb-a"}
