"""Where a result came from: the commit, the package versions, the machine (CPU model and the flags that decide
speed), the date. Written beside tables so that they can be cited and reproduced."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

#: CPU flags that change what the matrix kernels can use.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
PACKAGES = ("agreemate", "torch", "transformers", "peft", "dagster", "pandas", "altair", "great-expectations")


def cpu() -> dict:
    """CPU model, the speed-relevant flags present, logical cores and memory (Linux; fields blank elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu_model": model, "cpu_flags": [f for f in SPEED_FLAGS if f in flags], "cores": os.cpu_count(),
            "memory_gib": mem}


def git_commit(path: str | Path = ".") -> dict:
    """The commit of the checkout at ``path`` and whether it had uncommitted changes (None where it is no git
    checkout)."""
    def run(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    status = run("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "uncommitted_changes": bool(status) if status is not None else None}


def package_versions(names=PACKAGES) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def provenance(repo: str | Path = ".") -> dict:
    """Commit, machine, versions and the date, as one JSON-able dict."""
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), **git_commit(repo), **cpu(),
            "python": platform.python_version(), "packages": package_versions()}
