"""Start a deployment profile on this machine (docs/deploy.md).

    python -m agreemate_assets.deploy team      # Postgres + dagster-daemon + webserver, until Ctrl-C
    python -m agreemate_assets.deploy cluster   # + Redis, an S3 server (moto), 2 dagster-celery workers
    python -m agreemate_assets.deploy team --run-study   # ... and run the main job through the daemon, then stop
    python -m agreemate_assets.deploy postgres-up --root DIR | postgres-down --root DIR   # a throwaway Postgres

Every server listens on 127.0.0.1 and is stopped on exit; logs are in the root folder."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m agreemate_assets.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profile", choices=["team", "cluster", "postgres-up", "postgres-down"])
    p.add_argument("--root", type=Path, default=None, help="folder for the instance, logs and databases")
    p.add_argument("--port", type=int, default=3000, help="webserver port (default 3000)")
    p.add_argument("--study", default="", help='StudySettings fields as JSON, e.g. \'{"n_scenarios": 5}\'')
    p.add_argument("--results", default=None, help="results location (cluster default: s3://agreemate/results on "
                                                    "the local S3 server)")
    p.add_argument("--workers", type=int, default=2, help="celery workers (cluster)")
    p.add_argument("--run-study", action="store_true", help="run the main job through the daemon, then stop")
    args = p.parse_args(argv)

    from .services import Postgres

    if args.profile == "postgres-up":
        pg = Postgres(root=args.root).start()
        print(f"export AGREEMATE_TEST_PG_URL={shlex.quote(pg.url())} "
              f"AGREEMATE_TEST_PG_ROOT={shlex.quote(str(pg.root))}")
        return 0
    if args.profile == "postgres-down":
        if args.root is None or not (args.root / "port").is_file():
            print(f"no Postgres cluster in {args.root}", file=sys.stderr)
            return 1
        Postgres(root=args.root).remove()
        return 0

    from .stack import Stack

    study = json.loads(args.study) if args.study else {}
    stack = Stack(args.profile, args.root, results=args.results, study=study, workers=args.workers, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with stack:
        stack.apply_env()
        print(f"{args.profile} profile up: http://127.0.0.1:{stack.port}  (instance {stack.home}, logs in "
              f"{stack.root}, results {stack.env.get('AGREEMATE_RESULTS_DIR', 'the default')})")
        print("in another shell: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in stack.env.items()
                                              if k.startswith(("AGREEMATE_", "AWS_"))) + f" DAGSTER_HOME={stack.home}")
        if args.run_study:
            from agreemate_lib.negotiation.roster import default_pairs

            from ..defs.resources import study_from_env
            from ..study import StudyFailed, submit_study

            s = study_from_env()
            try:
                res = submit_study(stack.deployment(), s, default_pairs(s.roster_file()), with_reports=False)
            except StudyFailed as exc:
                print(f"FAILED: {exc}", file=sys.stderr)
                return 1
            return 0 if res.ok else 1
        print("Ctrl-C stops every server")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
