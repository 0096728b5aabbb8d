"""llama.cpp's own server (``llama-server``) on a GGUF, started and stopped by this process: a CPU backend.

On the project's 2-core CPU the natively built server generates more tokens per second than the transformers engine
(docs/performance.md: 0.72x engine / server), so a roster agent can run on it (``backend: llama-server``). The
server runs with parallel slots, continuous batching, prompt caching and JSON-schema constrained output; the agent
talks to it through the OpenAI-compatible backend, with every live dialogue's request in flight. One server per
process and configuration serves every agent that names it; it is stopped when the process exits (or at
:func:`stop_all`). The transformers backend stays the one for probing, training and adapters.

The binary: ``binary`` in the agent's options, else ``AGREEMATE_LLAMA_SERVER``, else the native build that
``bash scripts/build_llama_server.sh`` caches for this CPU (``~/.cache/agreemate/llama-server/``).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

from pydantic import Field

from agreemate_lib.backends.base import BackendConfig, BackendError
from agreemate_lib.backends.openai_http import OpenAIBackend


class LlamaServerMissing(BackendError):
    pass


def cached_binary(root: Path | None = None) -> Optional[str]:
    """The llama-server that scripts/build_llama_server.sh built for this CPU (its cache is keyed by the CPU flags)."""
    root = root or Path(os.environ.get("AGREEMATE_LLAMA_SERVER_CACHE",
                                       Path.home() / ".cache" / "agreemate" / "llama-server"))
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    tag = hashlib.sha256((flags + "\n").encode()).hexdigest()[:12]
    found = sorted(root.glob(f"*-{tag}/llama-server"))
    return str(found[-1]) if found else None


def find_binary(binary: str | None = None) -> str:
    path = binary or os.environ.get("AGREEMATE_LLAMA_SERVER") or cached_binary()
    if not path or not os.access(path, os.X_OK):
        raise LlamaServerMissing(f"no llama-server binary ({path or 'none built for this CPU'}): build it with "
                                 "`bash scripts/build_llama_server.sh` (about 5 minutes on 2 cores), or set "
                                 "AGREEMATE_LLAMA_SERVER or the agent's `binary` option")
    return path


class LlamaServer:
    """One ``llama-server`` process on 127.0.0.1: ``slots`` parallel sequences of ``context_per_slot`` tokens."""

    def __init__(self, binary: str, gguf: str, slots: int = 32, context_per_slot: int = 2048, threads: int = 0,
                 start_timeout_s: float = 120.0):
        self.binary, self.gguf, self.slots = binary, gguf, slots
        self.context_per_slot, self.threads, self.start_timeout_s = context_per_slot, threads, start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [self.binary, "-m", self.gguf, "--host", "127.0.0.1", "--port", str(self.port),
                "-np", str(self.slots), "-c", str(self.slots * self.context_per_slot),
                "-t", str(self.threads or os.cpu_count() or 1), "-fa", "off", "-no-kvu", "--cache-reuse", "64"]

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> LlamaServer:
        if self.running():
            return self
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        import tempfile

        fd, log = tempfile.mkstemp(prefix="agreemate-llama-server-", suffix=".log")
        self.log_path = Path(log)
        self.proc = subprocess.Popen(self.command(), stdout=fd, stderr=fd, start_new_session=True)
        os.close(fd)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2).read()
                return self
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_path.read_text(errors="replace")[-1500:]
                    self.stop()
                    raise BackendError(f"llama-server did not start ({' '.join(self.command())}): {exc}\n{tail}") \
                        from exc
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self.log_path = None


_SERVERS: dict[tuple, LlamaServer] = {}
_LOCK = threading.Lock()


def shared_server(binary: str, gguf: str, slots: int, context_per_slot: int, threads: int) -> LlamaServer:
    """The process's server for this configuration, started on first use (and again if it died)."""
    key = (binary, gguf, slots, context_per_slot, threads)
    with _LOCK:
        server = _SERVERS.get(key) or _SERVERS.setdefault(key, LlamaServer(*key))
        return server.start()


def stop_all() -> None:
    with _LOCK:
        for server in _SERVERS.values():
            server.stop()
        _SERVERS.clear()


atexit.register(stop_all)


class LlamaServerConfig(BackendConfig):
    binary: Optional[str] = None
    gguf: Optional[str] = Field(None, description="a GGUF file; default: the embedded SmolLM2")
    slots: int = Field(32, ge=1, description="parallel sequences (continuous batching)")
    context_per_slot: int = Field(2048, ge=256)
    threads: int = Field(0, ge=0, description="0: every core")
    timeout_s: float = Field(300.0, gt=0)
    turn_budget_s: float = Field(900.0, gt=0)


class LlamaServerBackend(OpenAIBackend):
    """The OpenAI-compatible backend on a llama-server this process starts (see the module's docstring)."""

    name = "llama-server"
    Config = LlamaServerConfig
    needs_credentials = False

    @classmethod
    def from_spec(cls, spec, **_) -> LlamaServerBackend:
        c = spec.backend_config()
        return cls(spec.model, binary=c.binary, gguf=c.gguf, slots=c.slots, context_per_slot=c.context_per_slot,
                   threads=c.threads, timeout_s=c.timeout_s, turn_budget_s=c.turn_budget_s,
                   structured=spec.structured, max_retries=spec.max_retries)

    def __init__(self, model: str = "smollm2", *, binary: str | None = None, gguf: str | None = None,
                 slots: int = 32, context_per_slot: int = 2048, threads: int = 0, timeout_s: float = 300.0,
                 turn_budget_s: float = 900.0, **kw):
        from agreemate_lib.backends.models import EMBEDDED_ALIASES, gguf_path

        if gguf is None and model.lower() not in EMBEDDED_ALIASES:
            raise ValueError(f"llama-server needs a GGUF file: set the agent's `gguf` option (model {model!r})")
        self.server = shared_server(find_binary(binary), str(Path(gguf or gguf_path()).expanduser()), slots,
                                    context_per_slot, threads)
        super().__init__(model, base_url=self.server.base_url, api_key="none", concurrency=slots, timeout_s=timeout_s,
                         turn_budget_s=turn_budget_s, **kw)
        self.model_id = f"llama-server:{Path(self.server.gguf).name}"
