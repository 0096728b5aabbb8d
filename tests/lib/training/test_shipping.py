"""The shipped adapters: present for every role the roster enables, small, bf16, described by their manifest, and
loaded only when their files match the manifest's digest."""

import json
import shutil

import pytest

from agreemate_lib.core.settings import repo_root
from agreemate_lib.negotiation.roster import load_roster
from agreemate_lib.training.shipping import AdapterDigestError, adapter_digest, read_manifest, verify_adapter


def shipped_folders():
    agents = load_roster(include_disabled=True)  # the embedded model's adapters, enabled or not, are all shipped
    return sorted({repo_root() / a.adapter for a in agents.values() if a.adapter and a.model == "smollm2"})


def test_every_enabled_adapter_is_shipped_with_its_manifest():
    from safetensors import safe_open

    folders = shipped_folders()
    assert len(folders) >= 2  # the fine-tuned buyer and seller at least
    for f in folders:
        m = read_manifest(f)
        assert m is not None, f"{f} has no manifest.json"
        assert m["digest"] == adapter_digest(f) == verify_adapter(f)
        assert (f / "adapter_model.safetensors").stat().st_size <= 10 * 2**20
        with safe_open(str(f / "adapter_model.safetensors"), "pt") as st:
            assert {str(st.get_tensor(k).dtype) for k in st.keys()} == {"torch.bfloat16"}
        assert m["training_config"]["model"] == "smollm2" and len(m["data_version"]) == 16
        # peft writes target_modules from a set (its order changes between processes): shipped sorted, so a rebuild's
        # digest can equal the shipped one
        cfg = json.loads((f / "adapter_config.json").read_text())
        assert cfg["target_modules"] == sorted(cfg["target_modules"])
        # what it was shipped for: held-out perplexity of the role's turns at least 30% below the base model's
        assert m["metrics"]["perplexity_reduction"] >= 0.3 and m["metrics"]["perplexity_reduction_ci_low"] > 0
        if m["training_config"].get("kind") == "dpo":  # a preference step: from the shipped supervised adapter
            start = repo_root() / m["training_config"]["init_from"]
            assert m["metrics"]["initialized_from_digest"] == m["previous"]["digest"] == adapter_digest(start)


def test_a_changed_adapter_is_refused_by_digest(tmp_path):
    from agreemate_lib.backends.models import load_model

    src = shipped_folders()[0]
    tok, model = load_model("smollm2", dtype="fp32", device="cpu", adapter=str(src))
    assert "lora" in type(model).__name__.lower() or hasattr(model, "peft_config")
    bad = tmp_path / "adapter"
    shutil.copytree(src, bad)
    blob = bytearray((bad / "adapter_model.safetensors").read_bytes())
    blob[-1] ^= 0xFF  # one weight byte changed, manifest not updated
    (bad / "adapter_model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(AdapterDigestError, match=str(bad)):
        load_model("smollm2", dtype="fp32", device="cpu", adapter=str(bad))
    # a user's own adapter without a manifest loads unchecked
    (bad / "manifest.json").unlink()
    assert verify_adapter(bad) is None
    assert json.loads((bad / "adapter_config.json").read_text())["r"] == 32


def test_adapter_config_is_written_in_one_order(tmp_path):
    from agreemate_lib.training.lora import canonical_adapter_config

    a, b = tmp_path / "a", tmp_path / "b"
    orders = ((a, ["v_proj", "q_proj", "o_proj", "k_proj"]), (b, ["k_proj", "o_proj", "q_proj", "v_proj"]))
    for folder, modules in orders:
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"target_modules": modules, "r": 32}))
        (folder / "adapter_model.safetensors").write_bytes(b"same")
    assert adapter_digest(a) != adapter_digest(b)
    canonical_adapter_config(a)
    canonical_adapter_config(b)
    assert adapter_digest(a) == adapter_digest(b)
