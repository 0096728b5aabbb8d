"""Partitions, defined once: agents (dynamic) and model pairs (buyer agent x seller agent)."""

from dagster import DynamicPartitionsDefinition, MultiPartitionsDefinition

#: One partition per agent id of the roster (added by the roster sensor or the agent_roster asset).
agents_partitions = DynamicPartitionsDefinition(name="agents")

#: One partition per (buyer agent, seller agent). Dagster allows exactly two dimensions; replicates and seeds live
#: inside a partition. Keys read "BUYER|SELLER" (dimensions in name order).
pair_partitions = MultiPartitionsDefinition({"buyer": agents_partitions, "seller": agents_partitions})


def pair_key(buyer: str, seller: str) -> str:
    from dagster import MultiPartitionKey

    return MultiPartitionKey({"buyer": buyer, "seller": seller})
