"""Where things live: the data folder, the cache folder. Environment variables override the defaults."""

from __future__ import annotations

import os
from pathlib import Path

#: Hugging Face hub id used when no local copy of Craigslist Bargains is present.
CRAIGSLIST_HUB_ID = "stanfordnlp/craigslist_bargains"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_root() -> Path:
    return _REPO_ROOT


def data_dir() -> Path | None:
    """The data folder: ``$AGREEMATE_DATA_DIR``, else ``../shared/data`` beside the repo when present, else None."""
    env = os.environ.get("AGREEMATE_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    default = _REPO_ROOT.parent / "shared" / "data"
    return default if default.is_dir() else None


def craigslist_source() -> str:
    """A local folder with HF-format JSON lines, or the hub id when there is none."""
    d = data_dir()
    if d is not None and (d / "craigslist_bargains").is_dir():
        return str(d / "craigslist_bargains")
    return CRAIGSLIST_HUB_ID


def cache_dir() -> Path:
    """Model conversions and the response cache: ``$AGREEMATE_CACHE_DIR`` or ``~/.cache/agreemate``."""
    p = Path(os.environ.get("AGREEMATE_CACHE_DIR", Path.home() / ".cache" / "agreemate")).expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p
