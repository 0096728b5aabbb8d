"""Resources shared by every domain: the study settings, where results are stored, inference-server credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from agreemate_lib.core.settings import get_settings


class StudySettings(ConfigurableResource):
    """What every negotiation of the study shares. Changing a field changes the ``scenarios`` asset's data version,
    so every transcript partition becomes stale."""

    results_dir: str = Field(default="", description="Where assets store results: a local path or a URL "
                                                     "(default: the AGREEMATE_RESULTS_DIR setting, <repo>/results)")
    roster_path: str = Field(default="", description="Roster YAML (default: the AGREEMATE_ROSTER setting)")
    data_source: str = Field(default="", description="Craigslist Bargains folder or hub id (default: the data setting)")
    split: str = Field(default="paper", description="paper (the paper's 30 listings, published targets), heldout "
                       "(train listings never trained on), or a dataset split: test, validation, train")
    n_scenarios: int = 30
    seed: int = 0
    max_turns: int = 15
    replicates: int = 1
    buyer_opens: bool = True
    response_cache: bool = True
    runner_mode: str = Field(default="batched", description="batched (dialogues in lockstep) or naive (one "
                             "dialogue at a time, the reference path); the transcripts do not depend on it in fp32")
    n_boot: int = Field(default=0, description="bootstrap resamples for CIs in asset tables (0: the setting, 2000)")
    probe_transcripts: int = Field(default=24, description="transcripts per probing variant")

    def results_location(self) -> str:
        return self.results_dir or get_settings().results

    def results_path(self) -> Path:
        """The results location as a local folder (file artifacts that libraries write by path)."""
        loc = self.results_location()
        if not self.is_local():
            raise ValueError(f"results location {loc} is not a local folder; this step needs local files")
        p = Path(loc.removeprefix("file://"))
        p.mkdir(parents=True, exist_ok=True)
        return p

    def is_local(self) -> bool:
        loc = self.results_location()
        return "://" not in loc or loc.startswith("file://")

    def work_path(self) -> Path:
        """A local folder for working state that never leaves this machine (the response cache, crash
        checkpoints): the results folder when it is local, else a folder in the cache keyed by the location."""
        if self.is_local():
            return self.results_path()
        import hashlib

        from agreemate_lib.core.settings import cache_dir

        key = hashlib.sha256(self.results_location().encode()).hexdigest()[:16]
        p = cache_dir() / "work" / key
        p.mkdir(parents=True, exist_ok=True)
        return p

    def roster_file(self) -> Path:
        return Path(self.roster_path) if self.roster_path else get_settings().roster

    def source(self) -> Optional[str]:
        return self.data_source or None

    def bootstrap_resamples(self) -> int:
        return self.n_boot or get_settings().n_boot


class InferenceServer(ConfigurableResource):
    """Credentials for OpenAI-compatible servers, from the environment (``EnvVar("OPENAI_API_KEY")``); handed to
    the backend at run time, never written into a config or the environment."""

    api_key: str = Field(default="", description="API key (from $OPENAI_API_KEY)")


class ResultsStore(ConfigurableResource):
    """File artifacts a user keeps beside the tables (adapters, figures, the report), under the results location.
    Patterned on the ModelStoreResource of Dagster's project_ml example."""

    location: str = Field(description="results location: a local folder or a URL")

    def path(self, *parts: str):
        from upath import UPath

        return UPath(self.location).joinpath(*parts)

    def local_dir(self, *parts: str) -> Path:
        """A local folder for libraries that write by path (peft, vl-convert); created if missing."""
        p = self.path(*parts)
        if getattr(p, "protocol", "") not in ("", "file", "local"):
            raise ValueError(f"{p} is not on the local file system; this artifact is written by a library that "
                             "needs a local folder")
        local = Path(str(p.path if hasattr(p, "path") else p))
        local.mkdir(parents=True, exist_ok=True)
        return local


def build_resources(study: StudySettings | None = None, api_key: str | None = None) -> dict:
    """Every resource of the project for one study: the settings, the stores on its results location, credentials.
    Tests and the main job build theirs here, so the IO managers always follow ``study.results_dir``."""
    import os

    from dagster import EnvVar

    from .io_managers import JsonStore, ParquetStore

    study = study or StudySettings()
    loc = study.results_location()
    if api_key is not None:
        server = InferenceServer(api_key=api_key)
    elif os.environ.get("OPENAI_API_KEY"):
        server = InferenceServer(api_key=EnvVar("OPENAI_API_KEY"))
    else:
        server = InferenceServer()
    return {"study": study, "io_manager": ParquetStore(base=loc), "json_io_manager": JsonStore(base=loc),
            "results_store": ResultsStore(location=loc), "inference_server": server}
