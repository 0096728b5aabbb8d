"""The main job: materialize the roster, the scenarios, the default pairs of agents.yaml and the metrics table
into the Dagster instance at $DAGSTER_HOME, in this process (the model is loaded once for every pair).

    python -m agreemate_assets.study [--pairs B|S ...] [--scenarios N] [--max-turns T]
"""

import argparse
import os
import sys
import time
from pathlib import Path

from dagster import AssetSelection, DagsterInstance, materialize

from agreemate_lib.negotiation.roster import default_pairs, load_roster

from .definitions import defs
from .partitions import pair_key, register_agents
from .resources import StudySettings


EVALUATION_ASSETS = ("human_baseline", "published_runs", "table3", "group_tables")


def run_study(instance: DagsterInstance, study: StudySettings, pairs: list[tuple[str, str]], log=print,
              log_level: str = "WARNING", with_reports: bool = False) -> dict:
    """Materialize roster, scenarios, the pairs' agent configs, the pairs (transcripts + metrics) and ``metrics``,
    one Dagster run each, recorded in ``instance``. Returns {"BUYER|SELLER": success}."""
    assets = list(defs.assets)  # type: ignore[arg-type]
    checks = list(defs.asset_checks)  # type: ignore[arg-type]
    resources = dict(defs.resources or {}) | {"study": study}
    everything = assets + checks

    def run(selection, partition_key=None):
        res = materialize(everything, selection=selection, partition_key=partition_key, instance=instance,
                          resources=resources, raise_on_error=False,
                          run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
        if not res.success:
            log(f"  run {res.run_id[:8]} for {partition_key or 'unpartitioned'} failed; see the Dagster UI")
        return res

    t0 = time.perf_counter()
    run(AssetSelection.assets("agent_roster", "scenarios").with_checks_if_possible()
        if hasattr(AssetSelection, "with_checks_if_possible") else
        AssetSelection.assets("agent_roster", "scenarios") | AssetSelection.checks_for_assets("scenarios"))
    roster = load_roster(study.roster_file())
    register_agents(instance, list(roster))
    for agent in sorted({b for b, _ in pairs}):
        run(AssetSelection.assets("buyer_agent_config"), agent)
    for agent in sorted({s for _, s in pairs}):
        run(AssetSelection.assets("seller_agent_config"), agent)
    results = {}
    for b, s in pairs:
        t = time.perf_counter()
        res = run(AssetSelection.assets("negotiation_transcripts", "negotiation_metrics")
                  | AssetSelection.checks_for_assets("negotiation_transcripts"), pair_key(b, s))
        results[f"{b}|{s}"] = res.success
        log(f"  {b} vs {s}: {'ok' if res.success else 'FAILED'} in {time.perf_counter() - t:.0f} s")
    run(AssetSelection.assets("metrics") | AssetSelection.checks_for_assets("metrics"))
    if with_reports:
        t = time.perf_counter()
        run((AssetSelection.groups("reports") - AssetSelection.assets("figure_training_curves"))
            | AssetSelection.assets(*EVALUATION_ASSETS) | AssetSelection.checks_for_assets("published_runs"))
        log(f"  evaluation and reports in {time.perf_counter() - t:.0f} s")
    log(f"study done in {time.perf_counter() - t0:.0f} s")
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agreemate_assets.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="*", help="BUYER|SELLER keys (default: study.default_pairs of the roster)")
    p.add_argument("--scenarios", type=int, default=None)
    p.add_argument("--max-turns", type=int, default=None)
    p.add_argument("--no-report", action="store_true", help="skip the evaluation and report assets")
    args = p.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(Path(__file__).resolve().parent.parent / "dagster_home")
    instance = DagsterInstance.get()
    study = StudySettings()
    overrides = {k: v for k, v in (("n_scenarios", args.scenarios), ("max_turns", args.max_turns)) if v is not None}
    if overrides:
        study = StudySettings(**(study.model_dump() | overrides))
    pairs = [tuple(k.split("|")) for k in args.pairs] if args.pairs else default_pairs(study.roster_file())
    print(f"AgreeMate study: {len(pairs)} pairs x {study.n_scenarios} scenarios, up to {study.max_turns} turns; "
          f"instance {os.environ['DAGSTER_HOME']}")
    results = run_study(instance, study, pairs, with_reports=not args.no_report)  # type: ignore[arg-type]
    out = study.results_path()
    print(f"\nresults: {out}/metrics.parquet (table), {out}/transcripts/ (one parquet per pair)")
    if not args.no_report:
        print(f"report:  {out}/report/report.html (figures in {out}/figures/)")
    print("browse them: DAGSTER_HOME=dagster_home .venv/bin/dagster dev -h 127.0.0.1 -p 3000   (then open "
          "http://127.0.0.1:3000)")
    try:
        import pandas as pd

        from agreemate_lib.evaluation.metrics import METRIC_NAMES

        table = pd.read_parquet(out / "metrics.parquet")
        with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 3):
            print(table[["pair", "n", *METRIC_NAMES]].to_string(index=False))
    except (OSError, KeyError) as exc:
        print(f"(no metrics table: {exc})")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
