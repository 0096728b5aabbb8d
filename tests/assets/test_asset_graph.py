"""The asset graph's structure, fast: a snapshot of keys, groups, kinds, partitions, upstreams, checks, jobs and
sensors (a structural change shows up in review as a change of asset_graph.json), the picture in
docs/architecture.md, and the library's independence from Dagster.

Regenerate the snapshot after an intended change: AGREEMATE_UPDATE_SNAPSHOTS=1 pytest tests/assets/test_asset_graph.py
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from agreemate_assets.definitions import defs
from agreemate_assets.lib.graph import describe_graph, mermaid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SNAPSHOT = HERE / "asset_graph.json"


def test_asset_graph_matches_snapshot():
    current = describe_graph(defs)
    if os.environ.get("AGREEMATE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    expected = json.loads(SNAPSHOT.read_text())
    assert current == expected, ("the asset graph changed; if intended, regenerate tests/assets/asset_graph.json "
                                 "with AGREEMATE_UPDATE_SNAPSHOTS=1")


def test_every_domain_folder_contributes_assets():
    groups = {a["group"] for a in describe_graph(defs)["assets"].values()}
    assert groups == {"data", "negotiation", "evaluation", "training", "probing", "reports"}
    folders = {p.name for p in (ROOT / "agreemate_assets" / "defs").iterdir() if p.is_dir() and p.name[0] != "_"}
    assert folders == groups


def test_architecture_picture_is_current():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = doc.split("<!-- asset-graph:begin -->")[1].split("<!-- asset-graph:end -->")[0]
    assert block.strip() == f"```mermaid\n{mermaid(defs)}\n```", "regenerate the graph in docs/architecture.md"


def test_library_never_imports_dagster():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "agreemate_lib").rglob("*.py")
                 if any(line.strip().startswith(("import dagster", "from dagster"))
                        for line in p.read_text().splitlines())]
    assert offenders == []
    code = ("import sys, agreemate_lib.cli.main, agreemate_lib.negotiation.runner, agreemate_lib.evaluation.report, "
            "agreemate_lib.training.lora, agreemate_lib.probing.heads; print('dagster' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
