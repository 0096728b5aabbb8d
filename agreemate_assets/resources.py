"""Resources: the study settings (where results go, how many scenarios, turns, seed) and server credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from agreemate_lib.core.settings import repo_root


class StudySettings(ConfigurableResource):
    """What every negotiation of the study shares. Changing a field changes the ``scenarios`` asset's data version,
    so every transcript partition becomes stale."""

    results_dir: str = Field(default="", description="Where assets write their files (default: <repo>/results, or "
                                                     "$AGREEMATE_RESULTS_DIR)")
    roster_path: str = Field(default="", description="Roster YAML (default: agents.yaml in the repo)")
    data_source: str = Field(default="", description="Craigslist Bargains folder or hub id (default: the data setting)")
    split: str = "test"
    n_scenarios: int = 30
    seed: int = 0
    max_turns: int = 15
    replicates: int = 1
    buyer_opens: bool = True
    response_cache: bool = True
    parse_failure_warn_rate: float = Field(default=0.2, description="warn when more turns than this fail to parse")

    def results_path(self) -> Path:
        p = Path(self.results_dir or os.environ.get("AGREEMATE_RESULTS_DIR", "") or repo_root() / "results")
        p.mkdir(parents=True, exist_ok=True)
        return p

    def roster_file(self) -> Path:
        return Path(self.roster_path or os.environ.get("AGREEMATE_ROSTER", "") or repo_root() / "agents.yaml")

    def source(self) -> Optional[str]:
        return self.data_source or None


class InferenceServer(ConfigurableResource):
    """Credentials for OpenAI-compatible servers; the key is read from the environment, never stored."""

    api_key: str = Field(default="", description="API key (from $OPENAI_API_KEY)")


def default_resources() -> dict:
    return {
        "study": StudySettings(),
        "inference_server": InferenceServer(api_key=EnvVar("OPENAI_API_KEY")) if os.environ.get("OPENAI_API_KEY")
        else InferenceServer(),
    }
