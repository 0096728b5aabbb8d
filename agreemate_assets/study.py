"""The main job: the roster, the scenarios, the default pairs of agents.yaml, the metrics table and (by default) the
evaluation and report assets, materialized into the Dagster instance at $DAGSTER_HOME by the project's defined jobs
(``study_setup``, ``buyer_config``/``seller_config``, ``study_pair`` per pair, ``study_metrics``,
``study_reports``), in this process (the model is loaded once for every pair; with ``--pairs-at-once``, pairs are
negotiated at once, their agents sharing one batch per step, before each pair's own run checks and stores them).

    python -m agreemate_assets.study [--pairs B|S ...] [--scenarios N] [--max-turns T] [--no-report]
                                     [--pairs-at-once N]
"""

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from dagster import DagsterInstance

from agreemate_lib.backends.batching import batch_stats
from agreemate_lib.negotiation.roster import default_pairs, load_roster

from .definitions import definitions_for
from .defs.negotiation.partitions import pair_key, register_agents
from .lib.resources import StudySettings, build_resources


def failure_reasons(res) -> list[str]:
    """Why a run failed, in words a person can act on: failed blocking checks (with their failed measures) and
    failed steps (with their error)."""
    out = []
    for ev in res.get_asset_check_evaluations():
        if not ev.passed and ev.severity.value == "ERROR":
            failed = ev.metadata.get("failed")
            out.append(f"check {ev.check_name} failed" + (f": {'; '.join(failed.value)}" if failed else ""))
    for ev in res.all_events:
        if ev.is_step_failure:
            err = ev.event_specific_data.error
            out.append(f"step {ev.step_key} failed: {err.message.strip().splitlines()[-1] if err else '?'}")
    return out or ["the run failed (see the Dagster UI)"]


class StudyFailed(RuntimeError):
    pass


def run_study(instance: DagsterInstance, study: StudySettings, pairs: list[tuple[str, str]], log=print,
              log_level: str = "WARNING", with_reports: bool = False, pairs_at_once: int = 1) -> dict:
    """Run the study's jobs for ``pairs``, each run recorded in ``instance``. Returns {"BUYER|SELLER": success}.
    ``pairs_at_once``: how many pairs are negotiated at once, sharing one batch per step, before their runs
    (0: all; 1: none ahead, each pair's run negotiates alone; see :func:`negotiate_ahead`).

    Setup and agent configs are blocking: a failure there stops the study (:class:`StudyFailed`). A pair whose run
    or blocking check fails is reported and left out of the metrics; the other pairs go on. ``failures`` (a list
    of (what, reason)) is attached to the returned dict as ``results.failures``."""
    project = definitions_for(build_resources(study))
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    failures: list[tuple[str, str]] = []

    def run(job_name: str, partition_key=None, blocking: bool = False):
        res = project.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition_key, raise_on_error=False, run_config=run_config)
        if not res.success:
            what = f"{job_name}" + (f" [{partition_key}]" if partition_key else "")
            for reason in failure_reasons(res):
                failures.append((what, reason))
                log(f"  FAILED {what} (run {res.run_id[:8]}): {reason}")
            if blocking:
                raise StudyFailed(f"{what} failed; the study stops here")
        return res

    t0 = time.perf_counter()
    run("study_setup", blocking=True)
    roster = load_roster(study.roster_file())
    register_agents(instance, list(roster))
    for agent in sorted({b for b, _ in pairs}):
        run("buyer_config", agent, blocking=True)
    for agent in sorted({s for _, s in pairs}):
        run("seller_config", agent, blocking=True)
    results = StudyResults()
    t = time.perf_counter()
    width = len(pairs) if pairs_at_once <= 0 else pairs_at_once
    if width > 1 and study.runner_mode == "batched":
        negotiate_ahead(project, instance, study, pairs, width, log)
    for b, s in pairs:  # each pair's own run: its partition, its checks (negotiations come from its checkpoint)
        t1 = time.perf_counter()
        res = run("study_pair", pair_key(b, s))
        results[f"{b}|{s}"] = res.success
        log(f"  {b} vs {s}: {'ok' if res.success else 'FAILED'} in {time.perf_counter() - t1:.0f} s")
    results.negotiation_s = time.perf_counter() - t
    log(f"  {len(pairs)} pairs negotiated and checked in {results.negotiation_s:.0f} s")
    results.metrics_ok = run("study_metrics").success
    if with_reports:
        t = time.perf_counter()
        results.reports_ok = run("study_reports").success
        log(f"  evaluation and reports in {time.perf_counter() - t:.0f} s")
    results.failures = failures
    log(f"study done in {time.perf_counter() - t0:.0f} s")
    return results


def negotiate_ahead(project, instance: DagsterInstance, study: StudySettings, pairs: list[tuple[str, str]],
                    width: int, log=print) -> None:
    """Negotiate ``width`` pairs at a time, one thread each, so agents on one base model (LoRA adapters included)
    share one batch per step; each pair's finished negotiations go to the checkpoint its own run then resumes from
    (same agents' config hashes, run settings and scenarios, or the checkpoint is set aside and the run negotiates
    itself). Dagster's runs are not made concurrent: its SQLite storage deadlocks under threads. A pair that
    cannot start here is left to its own run, which records the failure; error negotiations are never
    checkpointed, so its run negotiates them again."""
    from agreemate_lib.backends.models import kv_budgets
    from agreemate_lib.negotiation.runner import run_pairs

    from .defs.negotiation.assets import agent_spec, checkpoint_path, pair_agents, run_config, scenario_records
    from .lib.resources import InferenceServer

    t = time.perf_counter()
    logging.disable(logging.INFO)  # the loader logs every file it reads; nothing else runs meanwhile
    try:
        with project.get_asset_value_loader(instance) as loader:
            frame = loader.load_asset_value("scenarios")
            buyers = {b: agent_spec(loader.load_asset_value("buyer_agent_config", partition_key=b))
                      for b in sorted({b for b, _ in pairs})}
            sellers = {s: agent_spec(loader.load_asset_value("seller_agent_config", partition_key=s))
                       for s in sorted({s for _, s in pairs})}
    finally:  # a failed load must not leave the process's logging switched off
        logging.disable(logging.NOTSET)
    scen, run_settings = scenario_records(frame)
    cfg = run_config(study, run_settings)
    server = InferenceServer(api_key=os.environ.get("OPENAI_API_KEY", ""))
    jobs = []
    for b, s in pairs:
        try:
            buyer, seller, _ = pair_agents(study, server, buyers[b], sellers[s])
        except Exception as exc:  # noqa: BLE001 - the pair's own run meets it again and records it
            log(f"  {b} vs {s}: not negotiated ahead ({type(exc).__name__}: {exc}); its own run will try")
            continue
        jobs.append((scen, buyer, seller, {"checkpoint": checkpoint_path(study, b, s)}))
    before = batch_stats()
    for i in range(0, len(jobs), width):
        try:
            run_pairs(jobs[i : i + width], cfg)
        except Exception as exc:  # noqa: BLE001 - finished negotiations are checkpointed; the runs go on from there
            log(f"  negotiating ahead stopped ({type(exc).__name__}: {exc}); each pair's run goes on from its "
                "checkpoint")
    merged = {k: v for k, v in batch_stats(since=before).items() if v["batches"]}
    log(f"  {len(jobs)} pairs negotiated at once ({min(width, len(jobs))} at a time) in "
        f"{time.perf_counter() - t:.0f} s; batches per base model: {merged or 'none (no local model)'}; "
        f"KV caches kept between turns (tokens; conversations evicted to stay within the limit): {kv_budgets()}")


def submit_study(deployment, study: StudySettings, pairs: list[tuple[str, str]], log=print,
                 with_reports: bool = False) -> dict:
    """The main job through a deployment's daemon (team and cluster profiles): each job is submitted to the run
    queue, and the pairs are one asset backfill, so a new model's row and column of the grid is the same call. The
    study settings are the deployment's (its ``AGREEMATE_STUDY``). Returns the same results as :func:`run_study`."""
    from agreemate_lib.negotiation.roster import load_roster

    failures: list[tuple[str, str]] = []

    def report(sub, blocking=False):
        for part, status in sorted(sub.status_by_partition.items()):
            if status != "SUCCESS":
                what = sub.what + (f" [{part}]" if part else "")
                failures.append((what, f"run ended {status} (see the Dagster UI)"))
                log(f"  FAILED {what}: {status}")
        if blocking and not sub.ok:
            raise StudyFailed(f"{sub.what} failed; the study stops here")
        return sub

    t0 = time.perf_counter()
    report(deployment.run_job("study_setup"), blocking=True)
    roster = load_roster(study.roster_file())
    missing = sorted({a for pair in pairs for a in pair} - set(roster))
    if missing:
        raise StudyFailed(f"not in the roster: {', '.join(missing)}")
    report(deployment.run_job("buyer_config", sorted({b for b, _ in pairs})), blocking=True)
    report(deployment.run_job("seller_config", sorted({s for _, s in pairs})), blocking=True)
    t = time.perf_counter()
    keys = [pair_key(b, s) for b, s in pairs]
    sub = report(deployment.backfill(["negotiation_transcripts", "negotiation_metrics"], keys,
                                     f"{len(keys)} pairs"))
    results = StudyResults({k: sub.status_by_partition.get(k) == "SUCCESS" for k in keys})
    log(f"  {len(keys)} pairs through the daemon in {time.perf_counter() - t:.0f} s "
        f"({sum(results.values())} ok)")
    results.metrics_ok = report(deployment.run_job("study_metrics")).ok
    if with_reports:
        results.reports_ok = report(deployment.run_job("study_reports")).ok
    results.failures = failures
    log(f"study done in {time.perf_counter() - t0:.0f} s")
    return results


class StudyResults(dict):
    """{"BUYER|SELLER": success} plus the study-level outcome."""

    metrics_ok: bool = True
    reports_ok: bool = True
    failures: list
    #: Wall time of the pairs' runs (the negotiations with their checks), as the main job reports it.
    negotiation_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(self.values()) and self.metrics_ok and self.reports_ok and not self.failures


#: The columns the main job prints (every metric with CIs is in metrics.parquet, the UI and the report).
SHOWN = ["pair", "n", "error_rate", "agreement_rate", "dialogue_length", "fairness", "bias", "act_divergence",
         "deal_outside_limits", "reneging_rate", "utterance_price_mismatch", "opening_offer_share"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agreemate_assets.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="*", help="BUYER|SELLER keys (default: study.default_pairs of the roster)")
    p.add_argument("--scenarios", type=int, default=None)
    p.add_argument("--max-turns", type=int, default=None)
    p.add_argument("--no-report", action="store_true", help="skip the evaluation and report assets")
    p.add_argument("--pairs-at-once", type=int, default=1, metavar="N",
                   help="negotiate N pairs at once, sharing one batch per step, before each pair's run takes its "
                        "negotiations from its checkpoint (0: all; default 1: each pair's run negotiates alone; on "
                        "the 2-core CPU both take the same time, on a GPU at once is faster: docs/performance.md)")
    p.add_argument("--submit", type=int, metavar="PORT", default=None,
                   help="submit the jobs to the deployment whose webserver listens on 127.0.0.1:PORT (the team and "
                        "cluster profiles: docs/deploy.md) instead of running them in this process")
    args = p.parse_args(argv)
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(Path(__file__).resolve().parent.parent / "dagster_home")
    instance = DagsterInstance.get()
    from .defs.resources import study_from_env

    study = study_from_env()
    overrides = {k: v for k, v in (("n_scenarios", args.scenarios), ("max_turns", args.max_turns)) if v is not None}
    if overrides:
        study = StudySettings(**(study.model_dump() | overrides))
    pairs = [tuple(k.split("|")) for k in args.pairs] if args.pairs else default_pairs(study.roster_file())
    print(f"AgreeMate study: {len(pairs)} pairs x {study.n_scenarios} scenarios, up to {study.max_turns} turns; "
          f"instance {os.environ['DAGSTER_HOME']}")
    try:
        if args.submit:
            if overrides:
                raise StudyFailed("--scenarios/--max-turns are the deployment's settings when submitting (start it "
                                  "with AGREEMATE_STUDY='{\"n_scenarios\": N}')")
            from .deploy.submit import Deployment

            results = submit_study(Deployment(instance, args.submit), study, pairs,  # type: ignore[arg-type]
                                   with_reports=not args.no_report)
        else:
            results = run_study(instance, study, pairs, with_reports=not args.no_report,  # type: ignore[arg-type]
                                pairs_at_once=args.pairs_at_once)
    except StudyFailed as exc:
        print(f"\nFAILED: {exc}. Nothing after it ran; see the lines above and the Dagster UI.", file=sys.stderr)
        return 1
    out = study.results_location()
    print(f"\nresults: {out}/metrics.parquet (table), {out}/negotiation_transcripts/ (one parquet per pair)")
    if not args.no_report:
        print(f"report:  {out}/report/report.html (figures in {out}/figures/)")
    print("browse them: DAGSTER_HOME=dagster_home .venv/bin/dagster dev -h 127.0.0.1 -p 3000   (then open "
          "http://127.0.0.1:3000)")
    if not results.metrics_ok:
        print("\nFAILED: the metrics table was not rebuilt; no table is printed (an old one would mislead).",
              file=sys.stderr)
        _print_failures(results.failures)
        return 1
    try:
        import pandas as pd
        from upath import UPath

        with (UPath(out) / "metrics.parquet").open("rb") as fh:
            table = pd.read_parquet(fh)
        cols = [c for c in SHOWN if c in table]
        with pd.option_context("display.width", 250, "display.max_columns", None, "display.precision", 3):
            print(table[cols].to_string(index=False))
        print("(every metric with its CI: the metrics asset in the UI, metrics.parquet, or the report)")
    except (OSError, KeyError) as exc:
        print(f"(no metrics table: {exc})")
    if not results.ok:
        _print_failures(results.failures)
        return 1
    return 0


def _print_failures(failures: list[tuple[str, str]]) -> None:
    print(f"\nFAILED: {len(failures)} problem(s); the pairs concerned are left out of the table above:",
          file=sys.stderr)
    for what, reason in failures:
        print(f"  {what}: {reason}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
