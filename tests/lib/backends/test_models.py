"""The embedded model's conversion (GGUF to safetensors, on first use) when two processes need it at once."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

CONVERT = """
import json
from agreemate_lib.backends.models import converted_dir
from transformers import AutoConfig
d = converted_dir()
AutoConfig.from_pretrained(d)  # readable once returned
print(json.dumps({"dir": str(d), "complete_ns": (d / ".complete").stat().st_mtime_ns}))
"""


def test_two_processes_converting_at_once_get_one_complete_copy(tmp_path):
    """Two fresh processes (two Dagster steps, two test workers) ask for the model in an empty cache at the same
    time: one converts, the other waits for it and gets the same copy; neither replaces the folder the other
    returned (without the lock the second conversion removed the first's folder and wrote its own)."""
    import json

    env = os.environ | {"AGREEMATE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    seen = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert seen[0] == seen[1]  # the same folder, written once
    models = [p for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir()]
    assert [p.name for p in models] == [os.path.basename(seen[0]["dir"])]  # no temporary folder left behind
    assert (models[0] / ".complete").stat().st_mtime_ns == seen[0]["complete_ns"]
