"""Runs and backfills through a deployment's webserver and daemon (the team and cluster profiles): the main job
submits its jobs here instead of executing them in its own process, and waits for the daemon to run them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

DONE = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def retrying(fn, *args, attempts: int = 30, wait_s: float = 1.0, **kwargs):
    """Call ``fn``, retrying while the instance database is unreachable (a Postgres restart takes seconds): the
    waiting side must not fail a study that the daemon finishes."""
    from sqlalchemy.exc import DBAPIError

    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except DBAPIError:
            if i == attempts - 1:
                raise
            time.sleep(wait_s)


@dataclass
class _Record:
    """A run in the shape of a run record (for :meth:`Deployment._retry_pending`)."""

    dagster_run: object


@dataclass
class Submitted:
    """What the daemon did with a submission: the latest run per partition (or the one run) and its status."""

    what: str
    status_by_partition: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.status_by_partition) and all(s == "SUCCESS" for s in self.status_by_partition.values())


class Deployment:
    """A running webserver (GraphQL at 127.0.0.1:``port``) and the instance its daemon serves."""

    def __init__(self, instance: DagsterInstance, port: int, location: str = "agreemate",
                 timeout_s: float = 3600.0):
        from dagster_graphql import DagsterGraphQLClient

        self.instance = instance
        self.client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        self.location = location
        self.timeout_s = timeout_s

    def run_job(self, job: str, partitions: list[str] | None = None, tags: dict | None = None,
                dimensions: list[str] | None = None) -> Submitted:
        """Submit runs of a job to the queue (one, or one per partition, all at once); wait until they end. For a
        multi-partitioned job, ``dimensions`` names its dimensions in key order (``buyer|seller``): each run also
        gets the per-dimension tags that make its partition key a multi-partition key."""
        ids = {}
        for part in partitions or [""]:
            t = (tags or {}) | ({"dagster/partition": part} if part else {})
            if part and dimensions:
                t |= {f"dagster/partition/{d}": k for d, k in zip(dimensions, part.split("|"), strict=True)}
            ids[part] = self._submit(job, t)
        final = {p: self._follow_retries(r) for p, r in ids.items()}
        return Submitted(job, {p: retrying(self.instance.get_run_by_id, r).status.value for p, r in final.items()},
                         list(final.values()))

    def _follow_retries(self, run_id: str) -> str:
        """Wait for a run to end; when it failed and the run-retry daemon retries it, follow the retry (and its
        retries). Returns the id of the last run of the chain."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            self._wait(RunsFilter(run_ids=[run_id]))
            run = retrying(self.instance.get_run_by_id, run_id)
            if run.status != DagsterRunStatus.FAILURE or not self._retry_pending([_Record(run)]) and \
                    "dagster/auto_retry_run_id" not in run.tags:
                return run_id
            if "dagster/auto_retry_run_id" in run.tags:
                run_id = run.tags["dagster/auto_retry_run_id"]
                continue
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} failed and its retry did not appear in {self.timeout_s} s")
            time.sleep(0.5)

    def _submit(self, job: str, tags: dict) -> str:
        """Submit a run; a submission the webserver refused because its database connection was cut (a Postgres
        restart) is sent again, a few times."""
        from dagster_graphql import DagsterGraphQLClientError

        for attempt in range(5):
            try:
                return self.client.submit_job_execution(job, repository_location_name=self.location, tags=tags)
            except DagsterGraphQLClientError as exc:
                if "OperationalError" not in str(exc) or attempt == 4:
                    raise
                time.sleep(2.0)
        raise AssertionError("unreachable")

    def backfill(self, assets: list[str], partitions: list[str], title: str) -> Submitted:
        """An asset backfill over ``partitions``: the daemon makes the runs (one per partition), the queue runs them
        under the instance's limits, run retries re-run failures. Waits until every partition's latest run ended."""
        res = self.client._execute(LAUNCH_BACKFILL, {"params": {
            "assetSelection": [{"path": [a]} for a in assets], "partitionNames": partitions, "title": title}})
        out = res["launchPartitionBackfill"]
        if out["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(f"backfill {title!r} was refused: {out.get('message', out['__typename'])}")
        backfill_id = out["backfillId"]
        runs_filter = RunsFilter(tags={"dagster/backfill": backfill_id})
        deadline = time.monotonic() + self.timeout_s
        while True:  # the daemon makes the runs over a few ticks; retries add runs after failures
            backfill = retrying(self.instance.get_backfill, backfill_id)
            status = backfill.status.value if backfill else "?"
            records = retrying(self.instance.get_run_records, runs_filter)
            active = [r for r in records if r.dagster_run.status not in DONE]
            covered = {r.dagster_run.tags.get("dagster/partition") for r in records} >= set(partitions)
            # done when the daemon says so, or as soon as every partition has a run and all of them ended (the
            # daemon's own bookkeeping comes up to 30 s later, on its next loop)
            if (status != "REQUESTED" or covered) and not active and not self._retry_pending(records):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} ({title}) not done after {self.timeout_s} s: {status}")
            time.sleep(1.0)
        latest: dict[str, tuple[float, str, str]] = {}
        for r in retrying(self.instance.get_run_records, runs_filter):
            part = r.dagster_run.tags.get("dagster/partition", "")
            if part not in latest or r.create_timestamp.timestamp() > latest[part][0]:
                latest[part] = (r.create_timestamp.timestamp(), r.dagster_run.status.value, r.dagster_run.run_id)
        missing = [p for p in partitions if p not in latest]
        status_by = {p: v[1] for p, v in latest.items()} | {p: "NOT_RUN" for p in missing}
        return Submitted(f"{title} ({backfill_id})", status_by, [v[2] for v in latest.values()])

    def _retry_pending(self, records) -> bool:
        """A failed run that will be retried and whose retry run does not exist yet (``dagster/will_retry`` is set
        when it fails; ``dagster/auto_retry_run_id`` once the retry daemon made the new run)."""
        if not self.instance.run_retries_enabled:
            return False
        for r in records:
            tags = r.dagster_run.tags
            if r.dagster_run.status == DagsterRunStatus.FAILURE and tags.get("dagster/will_retry", "true") == "true" \
                    and "dagster/auto_retry_run_id" not in tags:
                return True
        return False

    def _wait(self, runs_filter: RunsFilter) -> None:
        deadline = time.monotonic() + self.timeout_s
        while any(r.dagster_run.status not in DONE for r in retrying(self.instance.get_run_records, runs_filter)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs {runs_filter} not done after {self.timeout_s} s")
            time.sleep(0.5)
