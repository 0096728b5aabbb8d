"""IO managers on universal paths: assets return their data, these store it under the results location (a local
folder or an object-store URL) and load it into downstream assets as inputs.

- :class:`ParquetStore`: DataFrames as parquet, one file per asset or per partition
  (``negotiation_transcripts/buyer=A/seller=B.parquet`` for a model pair).
- :class:`JsonStore`: dicts as JSON (agent configs: ``buyer_agent_config/AGENT.json``).

Local files are written atomically (a temporary file, then a rename), so a crash never leaves half a table.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pandas as pd
from dagster import (
    ConfigurableIOManagerFactory,
    InputContext,
    MultiPartitionsDefinition,
    OutputContext,
    UPathIOManager,
)
from pydantic import Field
from upath import UPath


def _write_bytes(path: UPath, data: bytes) -> None:
    if getattr(path, "protocol", "") in ("", "file", "local"):
        local = str(path.path if hasattr(path, "path") else path)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(local)}.", suffix=".tmp", dir=os.path.dirname(local))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class _HivePartitions(UPathIOManager):
    """Partition paths named ``dim=value`` (``buyer=A/seller=B``): the folder reads as one parquet dataset with a
    ``buyer`` column from the folder names."""

    def get_path_for_partition(self, context: InputContext | OutputContext, path: UPath, partition: str) -> UPath:
        pdef = context.asset_partitions_def if context.has_asset_partitions else None
        if isinstance(pdef, MultiPartitionsDefinition):
            names = sorted(d.name for d in pdef.partitions_defs)
            parts = partition.split("/")
            return path.joinpath(*[f"{n}={v}" for n, v in zip(names, parts)])
        return path / partition

    def load_input(self, context: InputContext) -> Any:
        """All stored partitions of an upstream asset as one dict, for inputs marked ``allow_missing_partitions``:
        partitions with no file (pairs not negotiated yet) are skipped quietly (a grid of agents has many)."""
        if context.has_asset_key and context.has_asset_partitions and \
                context.definition_metadata.get("allow_missing_partitions"):
            paths = self._get_paths_for_partitions(context)
            found = {key: path for key, path in paths.items() if path.exists()}
            context.log.debug(f"loading {len(found)} of {len(paths)} partitions; the others are not stored yet")
            return {key: self.load_from_path(context, path) for key, path in found.items()}
        return super().load_input(context)


class ParquetIOManager(_HivePartitions):
    extension = ".parquet"

    def dump_to_path(self, context: OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()} returned {type(obj).__name__}, expected a "
                            "pandas DataFrame for the parquet store")
        _write_bytes(path, obj.to_parquet(index=False))

    def load_from_path(self, context: InputContext, path: UPath) -> pd.DataFrame:
        with path.open("rb") as fh:
            return pd.read_parquet(fh)


class JsonIOManager(_HivePartitions):
    extension = ".json"

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        _write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def load_from_path(self, context: InputContext, path: UPath) -> Any:
        return json.loads(path.read_text())


class ParquetStore(ConfigurableIOManagerFactory):
    """Tables under ``base`` (a local folder or a URL such as ``s3://bucket/agreemate``)."""

    base: str = Field(description="results location")

    def create_io_manager(self, context) -> ParquetIOManager:
        return ParquetIOManager(base_path=UPath(self.base))


class JsonStore(ConfigurableIOManagerFactory):
    """JSON documents under ``base``."""

    base: str = Field(description="results location")

    def create_io_manager(self, context) -> JsonIOManager:
        return JsonIOManager(base_path=UPath(self.base))
