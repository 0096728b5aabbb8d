"""A scale model of the paper's grid on a fast backend: N rule-based agents (N x N pairs) registered as partitions,
a backfill of some of those pairs through a deployment profile, and the figures that say where orchestration costs
time: seconds per partition through the daemon, time to list partition status, time to register agents.

    python -m agreemate_assets.deploy.scale --agents 20 --backfill 40 --profile team   # prints JSON figures
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def roster_text(n: int) -> str:
    lines = ["agents:"]
    for i in range(n):
        beta = 0.2 + 0.05 * (i % 20)
        lines.append(f"  - {{id: rb{i:03d}, backend: rule-based, model: rule-based, beta: {beta:.2f}}}")
    return "\n".join(lines) + "\n"


def partition_status_timings(instance, keys_expected: int, port: int | None = None) -> dict:
    """Time to list the pairs' partition keys and their materialization status (instance query and, with a
    webserver, the UI's GraphQL query of the asset's partition stats)."""
    from dagster import AssetKey

    from ..defs.negotiation.partitions import pair_partitions

    out = {}
    t = time.perf_counter()
    keys = pair_partitions.get_partition_keys(dynamic_partitions_store=instance)
    out["list_partition_keys_s"] = round(time.perf_counter() - t, 3)
    out["partition_keys"] = len(keys)
    assert len(keys) == keys_expected, (len(keys), keys_expected)
    t = time.perf_counter()
    done = instance.get_materialized_partitions(AssetKey("negotiation_transcripts"))
    out["materialized_partitions_query_s"] = round(time.perf_counter() - t, 3)
    out["materialized"] = len(done)
    if port:
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        q = """query { assetNodes(assetKeys: [{path: ["negotiation_transcripts"]}]) {
                 partitionStats { numMaterialized numPartitions numFailed numMaterializing } } }"""
        t = time.perf_counter()
        res = client._execute(q)
        out["ui_partition_stats_s"] = round(time.perf_counter() - t, 3)
        out["ui_partition_stats"] = res["assetNodes"][0]["partitionStats"]
    return out


def run(profile: str, agents: int, backfill: int, scenarios: int, root: Path, grid_agents: int = 0) -> dict:
    from dagster import DagsterInstance

    from ..defs.negotiation.partitions import pair_key, register_agents
    from .stack import Stack

    roster = root / "agents.yaml"
    roster.write_text(roster_text(agents))
    ids = [f"rb{i:03d}" for i in range(agents)]
    pairs = [(b, s) for b in ids for s in ids][:backfill]
    study = {"n_scenarios": scenarios, "max_turns": 8, "roster_path": str(roster)}
    figures: dict = {"profile": profile, "agents": agents, "pair_partitions": agents * agents, "backfill": backfill,
                     "scenarios_per_pair": scenarios}
    from agreemate_lib.core.provenance import cpu

    figures |= cpu()
    if profile == "local":
        from ..lib.resources import StudySettings
        from ..study import run_study

        home = root / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
        settings = StudySettings(results_dir=str(root / "results"), **study)
        with DagsterInstance.get() as instance:
            t = time.perf_counter()
            res = run_study(instance, settings, pairs, log=lambda *_: None)
            wall = time.perf_counter() - t
            figures |= {"ok": sum(res.values()), "study_wall_s": round(wall, 1),
                        "s_per_partition": round(wall / backfill, 2)}
            figures |= partition_status_timings(instance, agents * agents)
        return figures
    with Stack(profile, root / profile, results=None if profile == "cluster" else str(root / "results"),
               study=study, inference_slots=2) as stack:
        stack.apply_env()
        instance = stack.instance()
        dep = stack.deployment(timeout_s=7200)
        assert dep.run_job("study_setup").ok  # registers the roster's agents as partitions
        assert dep.run_job("buyer_config", sorted({b for b, _ in pairs})).ok
        assert dep.run_job("seller_config", sorted({s for _, s in pairs})).ok
        t = time.perf_counter()
        sub = dep.backfill(["negotiation_transcripts", "negotiation_metrics"], [pair_key(b, s) for b, s in pairs],
                           f"scale {backfill}")
        wall = time.perf_counter() - t
        step_s = _step_seconds(instance, sub.runs)
        figures |= {"ok": sum(v == "SUCCESS" for v in sub.status_by_partition.values()),
                    "backfill_wall_s": round(wall, 1), "s_per_partition": round(wall / backfill, 2),
                    "mean_run_s": round(step_s["run"], 2), "mean_negotiation_step_s": round(step_s["step"], 3)}
        figures |= partition_status_timings(instance, agents * agents, stack.port)
        if grid_agents > agents:
            # the paper's grid with replicates and more models: many more agents as partitions, nothing run
            t = time.perf_counter()
            register_agents(instance, [f"rb{i:03d}" for i in range(grid_agents)])
            big = {"register_s": round(time.perf_counter() - t, 2)}
            big |= partition_status_timings(instance, grid_agents * grid_agents, stack.port)
            figures[f"grid_{grid_agents}_agents"] = big
    return figures


def _step_seconds(instance, run_ids: list[str]) -> dict:
    """Mean wall time of a run (start to end) and of its negotiation step (step start to success)."""
    from dagster import DagsterEventType

    runs, steps = [], []
    for rid in run_ids:
        rec = instance.get_run_record_by_id(rid)
        if rec and rec.start_time and rec.end_time:
            runs.append(rec.end_time - rec.start_time)
        start = end = None
        for e in instance.all_logs(rid, of_type={DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS}):
            if e.step_key and e.step_key.startswith("negotiation_transcripts"):
                if e.dagster_event_type == DagsterEventType.STEP_START:
                    start = e.timestamp
                else:
                    end = e.timestamp
        if start and end:
            steps.append(end - start)
    return {"run": sum(runs) / max(1, len(runs)), "step": sum(steps) / max(1, len(steps))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agreemate_assets.deploy.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=["local", "team", "cluster"], default="team")
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--backfill", type=int, default=40, help="pairs to materialize (of agents x agents)")
    p.add_argument("--scenarios", type=int, default=3)
    p.add_argument("--grid-agents", type=int, default=0,
                   help="then register this many agents (their square = pair partitions) and time the listing again")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agreemate-scale-") as d:
        print(json.dumps(run(args.profile, args.agents, args.backfill, args.scenarios, Path(d),
                             args.grid_agents), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
