"""The AgreeMate Dagster project: assets by domain, checks, the roster sensor, resources."""

import warnings

from dagster import BetaWarning, PreviewWarning

# MultiToSingleDimensionPartitionMapping, observable_source_asset, AssetSelection.all(include_sources) are beta/preview
# in Dagster 1.13: we use them knowingly; keep the CLI output readable.
warnings.filterwarnings("ignore", category=BetaWarning)
warnings.filterwarnings("ignore", category=PreviewWarning)

from dagster import AutomationConditionSensorDefinition, Definitions, in_process_executor, load_assets_from_modules

from .assets import data, evaluation, negotiation, probing, reports, training
from .assets.training import role_split_checks
from .checks import metrics_checks, scenarios_checks
from .resources import default_resources
from .sensors import roster_sensor

defs = Definitions(
    assets=load_assets_from_modules([data, negotiation, evaluation, reports, training, probing]),
    asset_checks=[scenarios_checks, metrics_checks, role_split_checks],
    sensors=[roster_sensor, AutomationConditionSensorDefinition("automation", target="*")],
    resources=default_resources(),
    # One process per run: the model is loaded once and shared by both agents; SQLite sees one writer per run.
    executor=in_process_executor,
)
