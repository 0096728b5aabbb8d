"""The AgreeMate Dagster project: definitions loaded from the ``defs`` folder, one subfolder per domain (data,
negotiation, evaluation, training, probing, reports), each with its assets, checks, partitions and sensors;
resources and jobs beside them."""

import os
import warnings
from pathlib import Path

from dagster import BetaWarning, PreviewWarning

# MultiToSingleDimensionPartitionMapping, observable_source_asset, AssetSelection.all(include_sources) are beta/preview
# in Dagster 1.13: we use them knowingly; keep the CLI output readable.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)

from dagster import (  # noqa: E402
    AutomationConditionSensorDefinition,
    Definitions,
    in_process_executor,
    load_from_defs_folder,
)


def executor():
    """In-process by default (one process per run: the model is loaded once and shared by both agents; SQLite sees
    one writer per run). With ``AGREEMATE_CELERY_BROKER`` set (the cluster profile, docs/deploy.md), dagster-celery:
    every step is a task on the broker, run by whichever worker serves its queue; a task whose worker dies is
    delivered again to another worker (late acknowledgement)."""
    broker = os.environ.get("AGREEMATE_CELERY_BROKER")
    if not broker:
        return in_process_executor
    from dagster_celery import celery_executor

    return celery_executor.configured({"broker": broker,
                                       "backend": os.environ.get("AGREEMATE_CELERY_BACKEND", broker),
                                       "config_source": celery_settings()})


def celery_settings(visibility_timeout_s: int | None = None) -> dict:
    """Celery settings of the cluster profile (the executor's and the workers' config). A task is acknowledged when
    it ends, so a task whose worker died goes back to the queue after the broker's visibility timeout
    (``AGREEMATE_CELERY_VISIBILITY_TIMEOUT``, default an hour: it must exceed the longest step, or a running step is
    handed out twice)."""
    timeout = visibility_timeout_s or int(os.environ.get("AGREEMATE_CELERY_VISIBILITY_TIMEOUT", "3600"))
    return {"task_acks_late": True, "task_reject_on_worker_lost": True, "worker_prefetch_multiplier": 1,
            "broker_connection_retry_on_startup": True,
            "broker_transport_options": {"visibility_timeout": timeout},
            "result_backend_transport_options": {"visibility_timeout": timeout}}

defs = Definitions.merge(
    # the [tool.dg] section of pyproject.toml names agreemate_assets.defs as the folder
    load_from_defs_folder(path_within_project=Path(__file__).resolve().parent),
    Definitions(
        sensors=[AutomationConditionSensorDefinition("automation", target="*")],
        executor=executor(),
    ),
)


def definitions_for(resources: dict) -> Definitions:
    """The same project with other resources (a test's or a study's results location): every asset, check, job and
    sensor of ``defs``, bound to ``resources``."""
    return Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, sensors=defs.sensors,
                       schedules=defs.schedules, resources=resources, executor=executor())
