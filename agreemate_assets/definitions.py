"""The AgreeMate Dagster project: definitions loaded from the ``defs`` folder, one subfolder per domain (data,
negotiation, evaluation, training, probing, reports), each with its assets, checks, partitions and sensors;
resources and jobs beside them."""

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

defs = Definitions.merge(
    # the [tool.dg] section of pyproject.toml names agreemate_assets.defs as the folder
    load_from_defs_folder(path_within_project=Path(__file__).resolve().parent),
    Definitions(
        sensors=[AutomationConditionSensorDefinition("automation", target="*")],
        # One process per run: the model is loaded once and shared by both agents; SQLite sees one writer per run.
        executor=in_process_executor,
    ),
)


def definitions_for(resources: dict) -> Definitions:
    """The same project with other resources (a test's or a study's results location): every asset, check, job and
    sensor of ``defs``, bound to ``resources``."""
    return Definitions(assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, sensors=defs.sensors,
                       schedules=defs.schedules, resources=resources, executor=in_process_executor)
