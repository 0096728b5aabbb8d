"""Settings, in one place and read once per process: where the data, the caches, the results and the roster live,
and the study-wide statistics defaults. Environment variables override the defaults:

- ``AGREEMATE_DATA_DIR``: the data folder (Craigslist Bargains, Deal or No Deal, published runs); default
  ``../shared/data`` beside the repo.
- ``AGREEMATE_CACHE_DIR``: converted models and hashes; default ``~/.cache/agreemate``.
- ``AGREEMATE_RESULTS_DIR``: where assets store results, a local path or an object-store URL (``s3://...``);
  default ``<repo>/results``.
- ``AGREEMATE_ROSTER``: the roster file; default ``<repo>/agents.yaml``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Hugging Face hub id used when no local copy of Craigslist Bargains is present.
CRAIGSLIST_HUB_ID = "stanfordnlp/craigslist_bargains"

_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Settings:
    data_dir: Path | None
    cache_dir: Path
    #: A local folder or a URL (anything universal_pathlib understands).
    results: str
    roster: Path
    #: Bootstrap resamples for every confidence interval the platform reports.
    n_boot: int = 2000
    #: CI level.
    ci_level: float = 0.95

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data = env.get("AGREEMATE_DATA_DIR")
        if data:
            data_dir: Path | None = Path(data).expanduser().resolve()
        else:
            default = _REPO_ROOT.parent / "shared" / "data"
            data_dir = default if default.is_dir() else None
        return cls(
            data_dir=data_dir,
            cache_dir=Path(env.get("AGREEMATE_CACHE_DIR", Path.home() / ".cache" / "agreemate")).expanduser(),
            results=env.get("AGREEMATE_RESULTS_DIR") or str(_REPO_ROOT / "results"),
            roster=Path(env.get("AGREEMATE_ROSTER") or _REPO_ROOT / "agents.yaml"),
        )


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings.from_env()


def repo_root() -> Path:
    return _REPO_ROOT


def data_dir() -> Path | None:
    return get_settings().data_dir


def craigslist_source() -> str:
    """A local folder with HF-format JSON lines, or the hub id when there is none."""
    d = data_dir()
    if d is not None and (d / "craigslist_bargains").is_dir():
        return str(d / "craigslist_bargains")
    return CRAIGSLIST_HUB_ID


def cache_dir() -> Path:
    p = get_settings().cache_dir
    p.mkdir(parents=True, exist_ok=True)
    return p
