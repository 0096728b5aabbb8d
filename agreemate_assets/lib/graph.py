"""The asset graph as data (for the snapshot test that makes structural changes visible in review) and as a
Mermaid picture (docs/architecture.md)."""

from __future__ import annotations

from dagster import Definitions


def _partitions(pdef) -> str | None:
    """``Multi(buyer=buyer_agents, seller=seller_agents)``, ``Dynamic(buyer_agents)``, ``Static(a, b)``."""
    if pdef is None:
        return None
    if hasattr(pdef, "partitions_defs"):
        dims = ", ".join(f"{d.name}={_partitions(d.partitions_def)}" for d in pdef.partitions_defs)
        return f"Multi({dims})"
    if getattr(pdef, "name", None):
        return f"Dynamic({pdef.name})"
    return f"Static({', '.join(pdef.get_partition_keys())})"


def describe_graph(defs: Definitions) -> dict:
    """Every asset with its group, kinds, partitions, upstream assets and checks; every job and sensor."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": _partitions(node.partitions_def),
            "upstream": sorted(k.to_user_string() for k in node.parent_keys),
            "checks": sorted(c.name for c in node.check_keys),
            "materializable": node.is_materializable,
        }
    return {
        "assets": assets,
        "jobs": sorted({j.name for j in defs.jobs or []}),
        "sensors": sorted({s.name for s in defs.sensors or []}),
    }


def mermaid(defs: Definitions) -> str:
    """The asset graph as a Mermaid flowchart, one subgraph per group."""
    g = describe_graph(defs)["assets"]
    groups: dict[str, list[str]] = {}
    for name, a in g.items():
        groups.setdefault(a["group"], []).append(name)
    lines = ["flowchart LR"]
    for group in ("data", "negotiation", "evaluation", "training", "probing", "reports"):
        if group not in groups:
            continue
        lines.append(f"  subgraph {group}")
        for name in groups.pop(group):
            shape = ("[[", "]]") if g[name]["partitions"] else ("[", "]")
            lines.append(f"    {name}{shape[0]}{name}{shape[1]}")
        lines.append("  end")
    for name, a in g.items():
        for up in a["upstream"]:
            lines.append(f"  {up} --> {name}")
    return "\n".join(lines)
