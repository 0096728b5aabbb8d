"""The AgreeMate Dagster project: assets by domain, checks, the roster sensor, resources."""

from dagster import AutomationConditionSensorDefinition, Definitions, in_process_executor, load_assets_from_modules

from .assets import data, evaluation, negotiation, reports
from .checks import metrics_checks, scenarios_checks
from .resources import default_resources
from .sensors import roster_sensor

defs = Definitions(
    assets=load_assets_from_modules([data, negotiation, evaluation, reports]),
    asset_checks=[scenarios_checks, metrics_checks],
    sensors=[roster_sensor, AutomationConditionSensorDefinition("automation", target="*")],
    resources=default_resources(),
    # One process per run: the model is loaded once and shared by both agents; SQLite sees one writer per run.
    executor=in_process_executor,
)
