"""The instance configuration (dagster.yaml) of each deployment profile (docs/deploy.md).

- ``local``: SQLite, one run at a time, runs in-process (dagster_home/dagster.yaml; the default).
- ``team``: Postgres storage (``AGREEMATE_PG_URL``), the queued run coordinator with concurrency limits (a pool per
  model-loading step, a limit per inference server), run retries, run monitoring; the daemon launches every run.
- ``cluster``: ``team`` plus dagster-celery: steps go to workers through a Redis broker (the executor is chosen in
  ``agreemate_assets.definitions`` from ``AGREEMATE_CELERY_BROKER``); results on object storage (an s3:// URL).
"""

from __future__ import annotations

from pathlib import Path

import yaml

PROFILES = ("local", "team", "cluster")


def instance_config(profile: str, max_concurrent_runs: int = 4, inference_slots: int = 1,
                    max_retries: int = 2) -> dict:
    """The dagster.yaml of a profile, as a dict. Secrets and addresses stay in the environment (``{env: ...}``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    cfg: dict = {"telemetry": {"enabled": False}}
    if profile == "local":
        return cfg | {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
                      "concurrency": {"runs": {"max_concurrent_runs": 1}}}
    return cfg | {
        "storage": {"postgres": {"postgres_url": {"env": "AGREEMATE_PG_URL"}}},
        "run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
        "concurrency": {
            "runs": {
                "max_concurrent_runs": max_concurrent_runs,
                # a run tagged with the inference server it talks to waits for that server's slot
                "tag_concurrency_limits": [{"key": "agreemate/server", "value": {"applyLimitPerUniqueValue": True},
                                            "limit": 1}],
            },
            # the "inference" pool (negotiation_transcripts): steps that load a model, one per CPU box or GPU
            "pools": {"default_limit": inference_slots},
        },
        "run_retries": {"enabled": True, "max_retries": max_retries, "retry_on_asset_or_op_failure": True},
        "run_monitoring": {"enabled": True, "start_timeout_seconds": 300, "poll_interval_seconds": 5},
    }


def write_instance(home: Path, profile: str, **kwargs) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    path.write_text(f"# AgreeMate instance, profile {profile} (written by agreemate_assets.deploy; docs/deploy.md)\n"
                    + yaml.safe_dump(instance_config(profile, **kwargs), sort_keys=False))
    return path


def celery_worker_config(broker: str, backend: str | None = None, visibility_timeout_s: int | None = None) -> dict:
    """The config file dagster-celery workers start with (the same broker and settings as the executor)."""
    from agreemate_assets.definitions import celery_settings

    return {"execution": {"config": {"broker": broker, "backend": backend or broker,
                                     "config_source": celery_settings(visibility_timeout_s)}}}
