"""Dagster wiring of AgreeMate (``dagster ... -m agreemate_assets``)."""

from .definitions import defs

__all__ = ["defs"]
