"""Code versions follow the source: no hand-bumped constants, and an edit changes the version."""

from agreemate_assets.definitions import defs
from agreemate_assets.lib.versions import source_version


def test_every_materializable_asset_has_a_derived_code_version():
    graph = defs.resolve_asset_graph()
    versions = {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()
                if graph.get(k).is_materializable}
    assert all(v and len(v) == 12 and v != "1" for v in versions.values()), versions
    # assets of different domains are versioned by different source
    assert versions["negotiation_transcripts"] != versions["metrics"] != versions["scenarios"]


def test_an_edit_changes_the_version(tmp_path, monkeypatch):
    pkg = tmp_path / "vpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    v1 = source_version("vpkg")
    assert source_version("vpkg") == v1
    # a comment, a docstring and layout cannot change what the code computes: the assets stay fresh
    (pkg / "mod.py").write_text('"""A module."""\n# a comment\nX = (\n    1)\n\n\ndef f():\n    """Doc."""\n'
                                '    return X\n')
    v2 = source_version("vpkg")
    (pkg / "mod.py").write_text('"""Another text."""\nX = 1  # changed comment\n\n\ndef f():\n    """Other doc."""\n'
                                '    return X\n')
    assert source_version("vpkg") == v2
    (pkg / "mod.py").write_text('X = 1\n\n\ndef f():\n    return X + 1\n')
    assert source_version("vpkg") != v2
    (pkg / "mod.py").write_text("X = 2\n")
    assert source_version("vpkg") != v1
    (pkg / "mod.py").write_text('def f():\n    """Doc."""\n    return "a"\n')
    v3 = source_version("vpkg")
    (pkg / "mod.py").write_text('def f():\n    """Doc."""\n    return "b"\n')  # a string value, not a docstring
    assert source_version("vpkg") != v3
