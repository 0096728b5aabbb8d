"""One deployment profile on this machine: its servers started in order, its environment, stopped in reverse.

    with Stack("cluster", root) as stack:   # Postgres, Redis, S3 (moto), 2 celery workers, daemon, webserver
        stack.deployment().backfill(...)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from . import services as S
from .profiles import celery_worker_config, write_instance

REPO = Path(__file__).resolve().parents[2]


class Stack:
    def __init__(self, profile: str, root: Path | None = None, results: str | None = None,
                 study: dict | None = None, workers: int = 2, port: int | None = None,
                 visibility_timeout_s: int = 3600, extra_env: dict | None = None, **instance_kwargs):
        if profile not in ("team", "cluster"):
            raise ValueError("Stack starts the team or the cluster profile (local needs no servers)")
        self.profile = profile
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix=f"agreemate-{profile}-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.home = self.root / "dagster_home"
        self.results = results
        self.study = study or {}
        self.n_workers = workers
        self.port = port or S.free_port()
        self.visibility_timeout_s = visibility_timeout_s
        self.extra_env = extra_env or {}
        self.instance_kwargs = instance_kwargs
        self.postgres: S.Postgres | None = None
        self.redis: S.Redis | None = None
        self.s3: S.S3Server | None = None
        self.workers: list[S.Server] = []
        self.daemon: S.Server | None = None
        self.webserver: S.Server | None = None
        self.env: dict[str, str] = {}

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | self.extra_env
        # the servers' own executables (celery, dagster-*) come from this environment even when it is not activated
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.postgres = S.Postgres().start()
        env["AGREEMATE_PG_URL"] = self.postgres.url()
        write_instance(self.home, self.profile, **self.instance_kwargs)
        if self.profile == "cluster":
            self.redis = S.Redis(log=self.log("redis")).start()
            self.s3 = S.S3Server(log=self.log("s3")).start()
            env |= self.s3.client_env()
            bucket = self.s3.create_bucket("agreemate")
            self.results = self.results or f"{bucket}/results"
            env["AGREEMATE_CELERY_BROKER"] = self.redis.url(0)
            env["AGREEMATE_CELERY_BACKEND"] = self.redis.url(1)
            env["AGREEMATE_CELERY_VISIBILITY_TIMEOUT"] = str(self.visibility_timeout_s)
        if self.results:
            env["AGREEMATE_RESULTS_DIR"] = self.results
        if self.study:
            env["AGREEMATE_STUDY"] = json.dumps(self.study)
        self.env = env
        if self.profile == "cluster":
            cfg = self.root / "celery.yaml"
            cfg.write_text(yaml.safe_dump(celery_worker_config(env["AGREEMATE_CELERY_BROKER"],
                                                               env["AGREEMATE_CELERY_BACKEND"],
                                                               self.visibility_timeout_s)))
            for i in range(self.n_workers):
                w = S.celery_worker(f"worker{i + 1}", self.home, env, REPO, cfg, ["dagster", "inference"],
                                    log=self.log(f"worker{i + 1}"))
                self.workers.append(w.start())
        self.daemon = S.daemon(self.home, env, REPO, log=self.log("daemon")).start()
        self.webserver = S.webserver(self.home, env, REPO, self.port, log=self.log("webserver")).start(
            timeout_s=180)

    def stop(self) -> None:
        for server in [self.webserver, self.daemon, *reversed(self.workers), self.s3, self.redis]:
            if server is not None:
                server.stop()
        if self.postgres is not None:
            self.postgres.remove()

    def leftovers(self) -> list[str]:
        """Processes of this stack still alive (its servers' process groups, its Postgres): empty after stop()."""
        groups = {s.proc.pid for s in [self.webserver, self.daemon, *self.workers, self.s3, self.redis]
                  if s is not None and s.proc is not None}
        return S.live_processes(groups, str(self.postgres.data) if self.postgres else None)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def apply_env(self, setenv=None) -> None:
        """Give this process the stack's environment (the instance's database, the object store, the broker), so
        that it can open the same instance: ``setenv`` is e.g. pytest's ``monkeypatch.setenv``."""
        setenv = setenv or os.environ.__setitem__
        for k, v in self.env.items():
            if os.environ.get(k) != v:
                setenv(k, v)
        setenv("DAGSTER_HOME", str(self.home))

    def instance(self):
        from dagster import DagsterInstance

        return DagsterInstance.from_config(str(self.home))

    def deployment(self, timeout_s: float = 1800.0):
        from .submit import Deployment

        return Deployment(self.instance(), self.port, timeout_s=timeout_s)
