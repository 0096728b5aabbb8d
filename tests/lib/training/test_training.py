"""Role splits and LoRA adapters: real data, real peft training steps on the embedded model."""

import json

import pandas as pd
import pytest

from agreemate_lib.training.lora import LoraTrainConfig, ema_update, lr_multiplier, train_lora
from agreemate_lib.training.splits import build_role_splits, dond_examples, numeric_thought, split_by_dialogue


@pytest.fixture(scope="module")
def splits(data_dir):
    return build_role_splits(dond_dir=data_dir / "deal_or_no_deal")


def test_role_splits_contract(splits, data_dir):
    for role in ("buyer", "seller", "generalist"):
        df = splits[role]
        assert len(df) > 1000
        targets = df["target"].map(json.loads)
        assert all(list(t) == ["reasoning", "action", "utterance", "price"] for t in targets)
        assert not any(str(t["reasoning"]) in ("None", "") for t in targets)
        train, val = set(df[df.split == "train"].dialogue_id), set(df[df.split == "validation"].dialogue_id)
        assert train and val and not (train & val)  # held out by dialogue
        assert not df.duplicated(["messages", "target"]).any()
    g = splits["generalist"]
    assert (g.role == "buyer").sum() == (g.role == "seller").sum()  # balanced by role
    cb = splits["buyer"][splits["buyer"].source == "craigslist"]
    priced = cb[cb.price.notna()]
    assert len(priced) > 300 and (priced.price > 0).all()
    assert set(splits["buyer"].role) == {"buyer"} and set(splits["seller"].role) == {"seller"}


def test_deal_or_no_deal_is_deduplicated_and_no_deal_is_never_accept(data_dir):
    paths = [data_dir / "deal_or_no_deal" / "test.txt"]
    df = dond_examples(paths)
    lines = sum(1 for line in paths[0].read_text().splitlines() if line.strip())
    assert df["dialogue_id"].nunique() <= 0.55 * lines  # each conversation is stored twice (a few only once)
    raw = {line.split("<dialogue>")[1].split("</dialogue>")[0]: "<no_agreement>" in line or "<disagree>" in line
           for line in paths[0].read_text().splitlines() if "<dialogue>" in line}
    assert any(raw.values())  # the file has no-deal conversations ...
    ends = df[df.target.map(lambda t: json.loads(t)["utterance"]) == "No deal."]
    assert len(ends) > 0 and set(ends.action) == {"reject"}  # ... and they are never labelled accept


def test_numeric_thought_and_schedule():
    t = numeric_thought("buyer", 100.0, 200.0, None, 150.0, "offer")
    assert "50%" in t and "$200" in t
    assert "None" not in numeric_thought("seller", 200.0, None, None, None, "inquire")
    cfg = LoraTrainConfig(warmup_steps=2, cycle_steps=4, min_lr_ratio=0.1)
    m = [lr_multiplier(s, cfg) for s in range(12)]
    assert m[0] < m[1] == 1.0 and m[2] == 1.0 and m[5] < m[2] and m[6] == 1.0  # restarts every 4 steps
    assert ema_update(None, 3.0, 0.9) == 3.0 and ema_update(3.0, 1.0, 0.9) == pytest.approx(2.8)


def test_split_by_dialogue_is_seeded():
    df = pd.DataFrame({"dialogue_id": [f"d{i // 3}" for i in range(60)]})
    a, b = split_by_dialogue(df, 0.2, seed=1), split_by_dialogue(df, 0.2, seed=1)
    assert a.equals(b) and a.groupby("dialogue_id").split.nunique().max() == 1


@pytest.mark.slow
@pytest.mark.parametrize("role,quantization", [("buyer", "nf4"), ("seller", "none"), ("generalist", "none")])
def test_train_save_reload_generate(splits, tmp_path, role, quantization):
    df = splits[role]
    df = df[df.source == "craigslist"]
    cfg = LoraTrainConfig(max_steps=4, micro_batch=2, grad_accum=1, train_examples=2, val_examples=2, lr=2e-3,
                          warmup_steps=1, cycle_steps=4, quantization=quantization, max_length=900)
    m = train_lora(df[df.split == "train"], df[df.split == "validation"], tmp_path / role, cfg, log=lambda *_: None)
    curves = pd.read_parquet(tmp_path / role / "curves.parquet")
    assert curves["loss"].iloc[-1] < curves["loss"].iloc[0]  # the same batch every step: the loss went down
    assert m["quantization"] == quantization
    assert (tmp_path / role / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / role / "adapter_config.json").read_text())["r"] == 32
    # reload with peft through an agent and generate a structured reply
    from agreemate_lib.backends.base import ChatRequest, GenerationSettings, ReplyFormat
    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.negotiation.parsing import parse_turn

    backend = TransformersBackend("smollm2", adapter=str(tmp_path / role))
    msgs = json.loads(df.iloc[0]["messages"])
    out = backend.generate([ChatRequest(msgs, ReplyFormat(cot=True, max_utterance_tokens=16,
                                                          max_reasoning_tokens=16), key="x")],
                           GenerationSettings(temperature=0.0))[0]
    assert parse_turn(out.text).ok and "+lora:" in backend.model_id
