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


class PostgresServer:
    """A running PostgreSQL server; each test gets its own database on it."""

    def __init__(self, url: str):
        self.url = url

    def new_database(self) -> str:
        import uuid

        import sqlalchemy

        name = "t_" + uuid.uuid4().hex[:12]
        engine = sqlalchemy.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_server():
    """The PostgreSQL server that scripts/test.sh started (AGREEMATE_TEST_PG_URL), else a throwaway one started
    and removed by this session."""
    url = os.environ.get("AGREEMATE_TEST_PG_URL")
    if url:
        yield PostgresServer(url)
        return
    from agreemate_assets.deploy.services import Postgres

    pg = Postgres().start()
    try:
        yield PostgresServer(pg.url())
    finally:
        pg.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def any_dagster_home(request, tmp_path, monkeypatch) -> Path:
    """A fresh Dagster instance on SQLite, then (a second run of the test) on its own Postgres database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    text = "telemetry:\n  enabled: false\n"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_server").new_database()
        text += f"storage:\n  postgres:\n    postgres_url: {url}\n"
    (home / "dagster.yaml").write_text(text)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def kill_after_first_checkpoint(cmd: list[str], env: dict, ckpt: Path, timeout: float = 600) -> int:
    """Start ``cmd`` in its own process group, SIGKILL it once ``ckpt`` holds its header and one finished
    negotiation, and return how many negotiations it had saved. Fails if the run ended before the kill."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and len(ckpt.read_text().splitlines()) >= 2:  # the header and one finished negotiation
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(ckpt.read_text().splitlines()) - 1
