"""The main job: the roster, the scenarios, the default pairs of agents.yaml, the metrics table and (by default) the
evaluation and report assets, materialized into the Dagster instance at $DAGSTER_HOME by the project's defined jobs
(``study_setup``, ``buyer_config``/``seller_config``, ``study_pair`` per pair, ``study_metrics``,
``study_reports``), in this process (the model is loaded once for every pair).

    python -m agreemate_assets.study [--pairs B|S ...] [--scenarios N] [--max-turns T] [--no-report]
"""

import argparse
import os
import sys
import time
from pathlib import Path

from dagster import DagsterInstance

from agreemate_lib.negotiation.roster import default_pairs, load_roster

from .definitions import definitions_for
from .defs.negotiation.partitions import pair_key, register_agents
from .lib.resources import StudySettings, build_resources


def run_study(instance: DagsterInstance, study: StudySettings, pairs: list[tuple[str, str]], log=print,
              log_level: str = "WARNING", with_reports: bool = False) -> dict:
    """Run the study's jobs for ``pairs``, each run recorded in ``instance``. Returns {"BUYER|SELLER": success}."""
    project = definitions_for(build_resources(study))
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}

    def run(job_name: str, partition_key=None):
        res = project.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition_key, raise_on_error=False, run_config=run_config)
        if not res.success:
            log(f"  run {res.run_id[:8]} of {job_name} for {partition_key or 'unpartitioned'} failed; "
                "see the Dagster UI")
        return res

    t0 = time.perf_counter()
    run("study_setup")
    roster = load_roster(study.roster_file())
    register_agents(instance, list(roster))
    for agent in sorted({b for b, _ in pairs}):
        run("buyer_config", agent)
    for agent in sorted({s for _, s in pairs}):
        run("seller_config", agent)
    results = {}
    for b, s in pairs:
        t = time.perf_counter()
        res = run("study_pair", pair_key(b, s))
        results[f"{b}|{s}"] = res.success
        log(f"  {b} vs {s}: {'ok' if res.success else 'FAILED'} in {time.perf_counter() - t:.0f} s")
    run("study_metrics")
    if with_reports:
        t = time.perf_counter()
        run("study_reports")
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
    out = study.results_location()
    print(f"\nresults: {out}/metrics.parquet (table), {out}/negotiation_transcripts/ (one parquet per pair)")
    if not args.no_report:
        print(f"report:  {out}/report/report.html (figures in {out}/figures/)")
    print("browse them: DAGSTER_HOME=dagster_home .venv/bin/dagster dev -h 127.0.0.1 -p 3000   (then open "
          "http://127.0.0.1:3000)")
    try:
        import pandas as pd
        from upath import UPath

        from agreemate_lib.evaluation.metrics import metric_names

        with (UPath(out) / "metrics.parquet").open("rb") as fh:
            table = pd.read_parquet(fh)
        with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 3):
            print(table[["pair", "n", *metric_names()]].to_string(index=False))
    except (OSError, KeyError) as exc:
        print(f"(no metrics table: {exc})")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
