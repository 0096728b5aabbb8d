"""Partitions, defined once: agents as buyers and as sellers (dynamic), and model pairs (buyer x seller).

Every agent of the roster is a partition of both agent dimensions. The two dimensions use two dynamic definitions
(one would do, but Dagster cannot map a per-agent asset onto one of two identical dimensions).
"""

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

buyer_agents_partitions = DynamicPartitionsDefinition(name="buyer_agents")
seller_agents_partitions = DynamicPartitionsDefinition(name="seller_agents")

#: One partition per (buyer agent, seller agent). Dagster allows exactly two dimensions; replicates and seeds live
#: inside a partition. Keys read "BUYER|SELLER" (dimensions in name order).
pair_partitions = MultiPartitionsDefinition({"buyer": buyer_agents_partitions, "seller": seller_agents_partitions})

AGENT_PARTITION_SETS = (buyer_agents_partitions.name, seller_agents_partitions.name)


def pair_key(buyer: str, seller: str) -> MultiPartitionKey:
    return MultiPartitionKey({"buyer": buyer, "seller": seller})


def missing_agents(instance, agent_ids) -> dict[str, list[str]]:
    """Per dynamic partition set, the agents not yet registered there (idempotent registration)."""
    out = {}
    for name in AGENT_PARTITION_SETS:
        have = set(instance.get_dynamic_partitions(name))
        new = [a for a in agent_ids if a not in have]
        if new:
            out[name] = new
    return out


def removed_agents(instance, roster_ids) -> dict[str, list[str]]:
    """Per dynamic partition set, the registered agents that are no longer in the roster file at all (disabled agents
    stay registered: their history and configs remain valid)."""
    keep = set(roster_ids)
    out = {}
    for name in AGENT_PARTITION_SETS:
        gone = sorted(a for a in instance.get_dynamic_partitions(name) if a not in keep)
        if gone:
            out[name] = gone
    return out


def unregister_agents(instance, roster_ids) -> list[str]:
    """Delete the partitions of agents removed from the roster file; returns their ids. Their materializations stay
    in the instance's history; no partition is left whose config asset would fail."""
    removed: set[str] = set()
    for name, gone in removed_agents(instance, roster_ids).items():
        for a in gone:
            instance.delete_dynamic_partition(name, a)
        removed.update(gone)
    return sorted(removed)


def register_agents(instance, agent_ids) -> list[str]:
    """Add the agents as partitions of both dimensions; returns the ids that were new anywhere."""
    added: set[str] = set()
    for name, new in missing_agents(instance, list(agent_ids)).items():
        instance.add_dynamic_partitions(name, new)
        added.update(new)
    return sorted(added)
