"""The project's resources: study settings, IO managers and the results store on the results location, and
inference-server credentials from the environment."""

from dagster import Definitions, definitions

from ..lib.resources import build_resources


@definitions
def resources() -> Definitions:
    return Definitions(resources=build_resources())
