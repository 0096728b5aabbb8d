import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("AGREEMATE_DATA_DIR", ROOT.parent / "shared" / "data"))
PUBLISHED = DATA / "agreemate_published_runs"


def pytest_configure(config):
    # Keep torch from fighting other processes for the 2 cores (see STACK_NOTES: contention).
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "craigslist_bargains").is_dir():
        pytest.fail(f"test data not found at {DATA}; set AGREEMATE_DATA_DIR")
    return DATA


@pytest.fixture(scope="session")
def smollm2_backend():
    """The embedded model, loaded once for the whole session (greedy tests share it)."""
    from agreemate_lib.backends.transformers_backend import TransformersBackend

    return TransformersBackend("smollm2")


@pytest.fixture(scope="session")
def smollm2_fp32():
    """The embedded model in fp32 (where batch layout cannot change the arithmetic), with the engine's KV reuse."""
    from agreemate_lib.backends.transformers_backend import TransformersBackend

    return TransformersBackend("smollm2", dtype="fp32")


@pytest.fixture()
def dagster_home(tmp_path, monkeypatch) -> Path:
    """A fresh, temporary Dagster instance (DAGSTER_HOME) for one test."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home
