"""The project's resources: study settings, IO managers and the results store on the results location, and
inference-server credentials from the environment."""

import json
import os

from dagster import Definitions, definitions

from ..lib.resources import StudySettings, build_resources


def study_from_env() -> StudySettings:
    """The study settings of this code location: the defaults, with ``AGREEMATE_STUDY`` (a JSON object of
    StudySettings fields, e.g. ``{"n_scenarios": 5}``) on top, so that a daemon, its run workers and celery workers
    all use the study that the deployment was started with (docs/deploy.md)."""
    raw = os.environ.get("AGREEMATE_STUDY", "").strip()
    try:
        overrides = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"AGREEMATE_STUDY is not a JSON object: {exc}") from None
    return StudySettings(**overrides)


@definitions
def resources() -> Definitions:
    return Definitions(resources=build_resources(study_from_env()))
