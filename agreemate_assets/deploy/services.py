"""Local servers for the team and cluster profiles, each started and stopped by whoever needs it (a test, the
``python -m agreemate_assets.deploy`` command): a throwaway PostgreSQL cluster, Redis, an S3-compatible server
(moto), Dagster's daemon and webserver, and dagster-celery workers. All listen on 127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60.0, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what or 'the server'} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what or 'the server'} did not listen on 127.0.0.1:{port} within {timeout_s} s")


def _signal_group(proc: subprocess.Popen, sig: int, timeout_s: float) -> None:
    """Send ``sig`` to the process group led by ``proc`` and give the leader ``timeout_s`` to exit."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pass


def _stop(proc: subprocess.Popen | None, timeout_s: float = 20.0) -> None:
    """Stop a server started in its own process group: SIGTERM to the group, then SIGKILL to whatever of the group
    is still there (the code servers and run processes a daemon or webserver spawned)."""
    if proc is None:
        return
    _signal_group(proc, signal.SIGTERM, timeout_s)
    deadline = time.monotonic() + 5.0
    while live_processes({proc.pid}) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_group(proc, signal.SIGKILL, timeout_s)


def live_processes(groups: set[int], cmdline_part: str | None = None) -> list[str]:
    """``"pid: command"`` of every live (not zombie) process in one of the process ``groups``, or whose command line
    contains ``cmdline_part``."""
    import psutil

    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(proc.info["cmdline"] or [])
            if os.getpgid(proc.pid) in groups or (cmdline_part and cmdline_part in cmd):
                out.append(f"{proc.pid}: {cmd[:120]}")
        except (psutil.Error, ProcessLookupError, OSError):
            continue
    return out


def _bin(name: str) -> str:
    """An executable of this Python environment (``dagster``, ``dagster-celery``), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed in {sys.prefix} nor on PATH")
    return found


def pg_bin() -> Path:
    """The newest PostgreSQL server binaries (Debian: /usr/lib/postgresql/<version>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise FileNotFoundError("PostgreSQL server binaries not found (Debian: apt-get install postgresql-15)")


class Postgres:
    """A throwaway PostgreSQL cluster in a temporary folder, trust authentication on 127.0.0.1 only. As root, the
    server runs as the ``postgres`` user (initdb refuses root)."""

    def __init__(self, port: int | None = None, user: str = "agreemate", root: Path | None = None):
        """``root``: the cluster's folder (default: a new temporary one); one that holds a cluster already (its
        ``port`` file) is reused, so a second process can stop it."""
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="agreemate-pg-"))
        self.root.mkdir(parents=True, exist_ok=True)
        saved = self.root / "port"
        self.port = port or (int(saved.read_text()) if saved.is_file() else free_port())
        self.user = user
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({r.returncode}): {r.stderr.strip()}\n{tail}")
        return r

    def start(self) -> Postgres:
        b = pg_bin()
        if self._as:
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o755)
        if not self.data.is_dir():
            self._run(str(b / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8")
        self._pg_ctl("start", "-w", "-l", str(self.log), "-o",
                     f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                     "-c max_connections=200")
        self.create_database("agreemate", exist_ok=True)
        (self.root / "port").write_text(str(self.port))
        return self

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(str(pg_bin() / "pg_ctl"), "-D", str(self.data), *args, check=check)

    def stop(self, mode: str = "fast") -> None:
        if self.data.is_dir():
            self._pg_ctl("stop", "-m", mode, "-w", check=False)

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast", "-w", "-l", str(self.log), "-o",
                     f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                     "-c max_connections=200")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def sql(self, statement: str, db: str = "postgres") -> str:
        r = self._run(str(pg_bin() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", db,
                      "-tAc", statement)
        return r.stdout.strip()

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        if exist_ok and self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == "1":
            return self.url(name)
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, db: str = "agreemate") -> str:
        # psycopg2 named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which dagster-postgres does not install
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{db}"

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.remove()


class Server:
    """A server process in its own process group, stopped on exit."""

    what = "server"

    def __init__(self, cmd: list[str], port: int | None, env: dict | None = None, log: Path | None = None,
                 cwd: str | Path | None = None):
        self.cmd, self.port, self.env, self.cwd = cmd, port, env, cwd
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0):
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 (kept open while it runs)
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.cwd)
        if self.port:
            wait_for_port(self.port, timeout_s, self.proc, self.what)
        return self

    def stop(self) -> None:
        _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL the whole process group (a machine that goes away)."""
        if self.proc and self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGKILL, 20)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Redis(Server):
    what = "redis-server"

    def __init__(self, port: int | None = None, log: Path | None = None):
        port = port or free_port()
        exe = shutil.which("redis-server")
        if not exe:
            raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
        super().__init__([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                         port, log=log)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


class S3Server(Server):
    """moto's S3-compatible server; :meth:`env` holds what a client needs (endpoint, dummy credentials)."""

    what = "moto S3 server"

    def __init__(self, port: int | None = None, log: Path | None = None):
        port = port or free_port()
        super().__init__([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, log=log)

    def client_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_ACCESS_KEY_ID": "agreemate",
                "AWS_SECRET_ACCESS_KEY": "agreemate", "AWS_DEFAULT_REGION": "us-east-1"}

    def create_bucket(self, name: str) -> str:
        import boto3

        e = self.client_env()
        boto3.client("s3", endpoint_url=e["AWS_ENDPOINT_URL"], aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"], region_name=e["AWS_DEFAULT_REGION"]
                     ).create_bucket(Bucket=name)
        return f"s3://{name}"


def daemon(home: Path, env: dict, cwd: Path, log: Path | None = None) -> Server:
    """``dagster-daemon run`` for the instance at ``home`` (the workspace.yaml in ``cwd``)."""
    return Server([_bin("dagster-daemon"), "run", "-w", str(cwd / "workspace.yaml")], None,
                  env=env | {"DAGSTER_HOME": str(home)}, log=log, cwd=cwd)


def webserver(home: Path, env: dict, cwd: Path, port: int | None = None, log: Path | None = None) -> Server:
    port = port or free_port()
    s = Server([_bin("dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", str(cwd / "workspace.yaml")],
               port, env=env | {"DAGSTER_HOME": str(home)}, log=log, cwd=cwd)
    s.what = "dagster-webserver"
    return s


def celery_worker(name: str, home: Path, env: dict, cwd: Path, config: Path, queues: list[str],
                  log: Path | None = None) -> Server:
    """A dagster-celery worker (one step at a time) serving ``queues``."""
    qs = ["-q", ",".join(queues)]  # one comma-separated -Q: celery keeps only the last of repeated -Q options
    s = Worker([_bin("dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "--name", name,
                "-y", str(config), *qs, "-l", "INFO",
                "--", "--concurrency", "1", "--without-gossip", "--without-mingle"],
               None, env=env | {"DAGSTER_HOME": str(home)}, log=log, cwd=cwd)
    s.what = f"celery worker {name}"
    return s


class Worker(Server):
    """A celery worker: started means its log says it is ready to take tasks."""

    def start(self, timeout_s: float = 120.0):
        super().start(timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-1500:] if self.log else ""
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{tail}")
            if self.log and " ready." in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        raise TimeoutError(f"{self.what} not ready after {timeout_s} s")
