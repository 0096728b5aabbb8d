"""Role splits and LoRA adapters: real data, real peft training steps on the embedded model."""

import json
import math

import pandas as pd
import pytest

from agreemate_lib.core.money import format_money
from agreemate_lib.core.vocabulary import REPLY_KEYS
from agreemate_lib.training.lora import (
    BestSoFar,
    LoraTrainConfig,
    ema_update,
    encode_dialogue,
    example_loss,
    lr_multiplier,
    perplexity_reduction,
    reproduction_stages,
    train_lora,
)
from agreemate_lib.training.splits import (
    build_role_splits,
    dond_frame,
    listing_key,
    merge_turns,
    numeric_thought,
    split_by_listing,
)


@pytest.fixture(scope="module")
def paper_keys(data_dir):
    from agreemate_lib.evaluation.paper import paper_scenarios_keys

    return paper_scenarios_keys(data_dir / "agreemate_published_runs" / "baseline-3B-buyer+baseline-3B-seller.csv")


@pytest.fixture(scope="module")
def splits(data_dir, paper_keys):
    return build_role_splits(str(data_dir / "craigslist_bargains"), dond_dir=data_dir / "deal_or_no_deal",
                             exclude_listings=paper_keys)


def test_role_splits_cover_every_dialogue_with_text(splits):
    g = splits["generalist"]
    cb = g[g.source == "craigslist"]
    # both splits with text: the annotated validation dialogues and the tagger-labelled rest (test + validation)
    assert set(cb.split_source) == {"validation", "test"} and set(cb.labels) == {"annotated", "tagger"}
    assert cb.dialogue_id.nunique() > 1300  # of 1,435 (longer than 15 turns or about a paper listing: left out)
    for role in ("buyer", "seller"):
        df = splits[role]
        assert set(df.role) == {role}
        for r in df.sample(40, random_state=0).itertuples():
            msgs, mask = json.loads(r.messages), json.loads(r.train_mask)
            assert len(msgs) == len(mask) and msgs[0]["role"] == "system"
            for m, on in zip(msgs, mask):
                if on:  # targets are the role's own turns, as the JSON the agents emit
                    assert m["role"] == "assistant"
                    reply = json.loads(m["content"])
                    assert list(reply) == ["reasoning", *REPLY_KEYS]  # as the agents write it
                    assert reply["action"] != "unknown" and reply["reasoning"] not in ("", "None")
    train, val = (set(g.loc[g.split == s, "listing_key"]) for s in ("train", "validation"))
    assert train and val and not (train & val)  # validation holds out whole listings


def test_no_training_dialogue_is_about_an_evaluation_listing(splits, paper_keys, data_dir):
    from agreemate_lib.core.scenarios import sample_scenarios
    from agreemate_lib.training.splits import heldout_train_scenarios

    trained = set(splits["generalist"].listing_key)
    assert len(paper_keys) == 29 and not (trained & paper_keys)  # 30 listings, one title twice
    held = heldout_train_scenarios(50, seed=1, source=str(data_dir / "craigslist_bargains"),
                                   exclude_listings=trained)
    assert len(held) == 50 and not ({listing_key(s.title) for s in held} & trained)
    # the plain train sample is not held out: some train listings are the same items as dialogues we train on
    plain = sample_scenarios("train", 2000, seed=1, source=str(data_dir / "craigslist_bargains")).scenarios
    assert {listing_key(s.title) for s in plain} & trained


def test_merge_turns_keeps_the_event_and_the_last_price():
    turns = [{"speaker": "buyer", "utterance": "how about $40?", "action": "init-price", "price": 40.0,
              "trainable": True},
             {"speaker": "buyer", "utterance": "", "action": "offer", "price": 40.0, "trainable": True},
             {"speaker": "seller", "utterance": "", "action": "accept", "price": None, "trainable": True}]
    m = merge_turns(turns)
    assert [t["action"] for t in m] == ["offer", "accept"] and m[0]["utterance"] == "how about $40?"
    assert m[0]["price"] == 40.0


def test_whole_dialogue_loss_is_on_the_role_turns_only(splits, smollm2_fp32):
    tok = smollm2_fp32.tokenizer
    r = splits["seller"][splits["seller"].source == "craigslist"].iloc[3]
    msgs, mask = json.loads(r.messages), json.loads(r.train_mask)
    ex = encode_dialogue(tok, msgs, mask)
    pieces, cur = [], []
    for tid, lab in zip(ex["input_ids"], ex["labels"]):
        if lab != -100:
            assert lab == tid
            cur.append(tid)
        elif cur:
            pieces.append(tok.decode(cur))
            cur = []
    if cur:
        pieces.append(tok.decode(cur))
    wanted = [m["content"] + tok.eos_token for m, on in zip(msgs, mask) if on]
    assert pieces == wanted  # exactly the marked assistant turns and their end-of-turn token, nothing else
    assert not any(m["content"] in "".join(pieces) for m, on in zip(msgs, mask) if m["role"] == "user")
    # the training loss takes logits only where a target is predicted: the same value as the full forward's loss
    import torch

    with smollm2_fp32.shared.base_only(), torch.no_grad():
        full = smollm2_fp32.model(input_ids=torch.tensor([ex["input_ids"]]),
                                  labels=torch.tensor([ex["labels"]])).loss.item()
        total, n = example_loss(smollm2_fp32.model, ex, "cpu")
    assert n == sum(x != -100 for x in ex["labels"][1:]) and total.item() / n == pytest.approx(full, rel=1e-5)


def test_an_accept_outside_the_sides_own_limits_is_never_a_target(data_dir):
    from agreemate_lib.training.splits import accepts_outside_limits, craigslist_dialogues, dialogue_sequence

    dialogues = craigslist_dialogues(("validation",), str(data_dir / "craigslist_bargains"))
    found = 0
    for d in dialogues:
        for k in accepts_outside_limits(d):
            t, sc = d["turns"], d["scenario"]
            role = t[k]["speaker"]
            prior = [x["price"] for x in t[:k] if x["speaker"] != role and x["price"] is not None]
            limit = sc.view_for("seller")["bottom_line"] if role == "seller" else sc.listing_price
            assert t[k]["action"] == "accept" and (prior[-1] < limit if role == "seller" else prior[-1] > limit)
            msgs, flags = dialogue_sequence(d, role)
            i = (2 if t[0]["speaker"] == role else 1) + k
            assert json.loads(msgs[i]["content"])["action"] == "accept" and not flags[i]
            found += 1
    assert found >= 20  # human sellers below their bottom line are not rare (84 of validation + test)


def test_a_reneging_price_is_never_a_target_and_the_other_sides_price_is_shown(data_dir):
    from agreemate_lib.training.splits import craigslist_dialogues, dialogue_sequence, reneging_turns

    dialogues = craigslist_dialogues(("validation",), str(data_dir / "craigslist_bargains"))
    found = shown = 0
    for d in dialogues:
        t = d["turns"]
        for k in reneging_turns(d):
            role = t[k]["speaker"]
            own = [x["price"] for x in t[:k] if x["speaker"] == role and x["price"] is not None]
            assert own and (t[k]["price"] < own[-1] if role == "buyer" else t[k]["price"] > own[-1])
            msgs, flags = dialogue_sequence(d, role)
            i = (2 if t[0]["speaker"] == role else 1) + k
            assert json.loads(msgs[i]["content"])["price"] == t[k]["price"] and not flags[i]
            found += 1
        # the other side's price field reads beside its words, also where the words name no number
        for k, x in enumerate(t):
            if x["price"] is not None and x["utterance"] and x["action"] not in ("accept", "reject", "quit"):
                other = "seller" if x["speaker"] == "buyer" else "buyer"
                msgs, _ = dialogue_sequence(d, other)
                i = (2 if t[0]["speaker"] == other else 1) + k
                if i < len(msgs):
                    assert msgs[i]["content"].startswith(x["utterance"])
                    assert f"[The {x['speaker']} proposes {format_money(x['price'])}.]" in msgs[i]["content"]
                    shown += 1
    assert found >= 20 and shown >= 500


def test_deal_or_no_deal_is_deduplicated_and_no_deal_is_never_accept(data_dir):
    paths = [data_dir / "deal_or_no_deal" / "test.txt"]
    df = dond_frame(paths)
    lines = sum(1 for line in paths[0].read_text().splitlines() if line.strip())
    assert df["dialogue_id"].nunique() <= 0.55 * lines  # each conversation is stored twice (a few only once)
    assert (df.groupby("dialogue_id").role.nunique() == 2).all()  # one row per role
    raw = {line.split("<dialogue>")[1].split("</dialogue>")[0]: "<no_agreement>" in line or "<disagree>" in line
           for line in paths[0].read_text().splitlines() if "<dialogue>" in line}
    assert any(raw.values())  # the file has no-deal conversations ...
    replies = [json.loads(m["content"]) for s in df.messages for m in json.loads(s) if m["role"] == "assistant"]
    no_deal = [x for x in replies if x["utterance"] == "No deal."]
    assert no_deal and {x["action"] for x in no_deal} == {"reject"}  # ... and they are never labelled accept


def test_tagger_against_the_annotated_dialogues(data_dir):
    from agreemate_lib.core.craigslist import iter_annotated_dialogues
    from agreemate_lib.training.tagger import evaluate_tagger

    d = [(sc.listing_price, t) for _, sc, t in iter_annotated_dialogues("validation",
                                                                       str(data_dir / "craigslist_bargains"))]
    r = evaluate_tagger(d)
    assert r["turns"] > 4000
    assert r["accuracy_confident"] > 0.85 and r["confident_share"] > 0.8
    assert r["price_recall"] > 0.85 and r["price_precision"] > 0.8
    for act in ("intro", "inquire", "init-price", "counter-price", "offer"):
        assert r["per_act"][act]["precision"] > 0.9 and r["per_act"][act]["recall"] > 0.85, act


def test_perplexity_reduction_ci():
    base = [(20.0, 10), (30.0, 10), (25.0, 10)]
    tuned = [(10.0, 10), (15.0, 10), (12.0, 10)]
    r = perplexity_reduction(base, tuned, n_boot=200)
    assert r["perplexity_reduction_ci_low"] <= r["perplexity_reduction"] <= r["perplexity_reduction_ci_high"]
    assert r["perplexity_reduction"] == pytest.approx(1 - math.exp(37 / 30) / math.exp(75 / 30))  # pooled over tokens


def test_early_stopping_waits_patience_evaluations_or_the_wall_clock():
    best = BestSoFar(1.0, 0, None)
    best.offer(1.0, 1, None)  # not better by more than 1e-4: no weights are taken, one stale evaluation
    assert best.stale == 1 and best.stop_reason(2, False, 5, "validation") is None
    assert best.stop_reason(2, True, 5, "validation") == "wall-clock budget of 5 minutes"
    best.offer(1.5, 2, None)
    assert best.step == 0 and best.value == 1.0
    # patience spent is named first, with what was watched (the supervised trainer's validation, DPO's held-out)
    assert best.stop_reason(2, True, 5, "held-out") == "early stop: no held-out improvement in 2 evaluations"


def test_numeric_thought_and_schedule():
    # a new price is placed between the number it moves from (the own last price, else the target) and theirs
    t = numeric_thought("buyer", 100.0, 200.0, None, 150.0, "offer")
    assert t.endswith("I answer $150, between $100 and their $200.")
    assert numeric_thought("buyer", 100.0, 200.0, 120.0, 150.0, "offer").endswith("between $120 and their $200.")
    assert numeric_thought("buyer", 100.0, 200.0, 120.0, 120.0, "insist").endswith("I hold at $120.")
    assert "None" not in numeric_thought("seller", 200.0, None, None, None, "inquire")
    # the numbers come before the decision, the same way for every act (a seller's floor included)
    heads = {numeric_thought("seller", 200.0, 120.0, 210.0, p, a, floor=140.0).split(".")[0]
             for p, a in ((180.0, "counter-price"), (None, "accept"), (None, "quit"), (None, "inform"))}
    assert heads == {"They are at $120; I was at $210; my target is $200 (never below $140)"}
    cfg = LoraTrainConfig(warmup_steps=2, cycle_steps=4, min_lr_ratio=0.1)
    m = [lr_multiplier(s, cfg) for s in range(12)]
    assert m[0] < m[1] == 1.0 and m[2] == 1.0 and m[5] < m[2] and m[6] == 1.0  # restarts every 4 steps
    assert ema_update(None, 3.0, 0.9) == 3.0 and ema_update(3.0, 1.0, 0.9) == pytest.approx(2.8)


def test_split_by_listing_is_seeded():
    df = pd.DataFrame({"listing_key": [f"d{i // 3}" for i in range(60)]})
    a, b = split_by_listing(df, 0.2, seed=1), split_by_listing(df, 0.2, seed=1)
    assert a.equals(b) and a.groupby("listing_key").split.nunique().max() == 1


def shortest(df: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` shortest Craigslist dialogues of each split (train, validation): a few steps of real training that
    cost as little as real dialogues can."""
    df = df[(df.source == "craigslist") & df.train_mask.str.contains("true")]  # with a target turn of the role
    df = df.assign(_chars=df.messages.str.len()).sort_values(["_chars", "dialogue_id"]).drop(columns="_chars")
    return df[df.split == "train"].head(n), df[df.split == "validation"].head(n)


@pytest.mark.slow
@pytest.mark.parametrize("role,quantization", [("buyer", "nf4"), ("seller", "none")])  # generalist: same path
def test_train_save_reload_generate(splits, tmp_path, role, quantization):
    train, val = shortest(splits[role], 2)
    cfg = LoraTrainConfig(max_steps=4, micro_batch=2, grad_accum=1, train_examples=2, val_examples=2, lr=2e-3,
                          warmup_steps=1, cycle_steps=4, quantization=quantization, eval_every=2,
                          final_eval_dialogues=2, patience=10)
    m = train_lora(train, val, tmp_path / role, cfg, log=lambda *_: None)
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
    msgs, mask = json.loads(train.iloc[0]["messages"]), json.loads(train.iloc[0]["train_mask"])
    msgs = msgs[: mask.index(True)]  # the prompt before the role's first target turn
    out = backend.generate([ChatRequest(msgs, ReplyFormat(cot=True, max_utterance_tokens=16,
                                                          max_reasoning_tokens=16), key="x")],
                           GenerationSettings(temperature=0.0))[0]
    assert parse_turn(out.text).ok and "+lora:" in backend.model_id


@pytest.mark.slow
def test_training_is_reproducible(splits, tmp_path):
    """The same config on the same data gives the same adapter, byte for byte (what a rebuild relies on)."""
    from agreemate_lib.training.shipping import adapter_digest

    train, val = shortest(splits["buyer"], 2)
    cfg = LoraTrainConfig(max_steps=2, micro_batch=1, grad_accum=2, train_examples=2, val_examples=1, eval_every=1,
                          final_eval_dialogues=1, max_minutes=0, threads=1)
    for run in ("a", "b"):
        train_lora(train, val, tmp_path / run, cfg, log=lambda *_: None)
    assert adapter_digest(tmp_path / "a") == adapter_digest(tmp_path / "b")


@pytest.mark.slow
def test_a_resumed_run_continues_the_weights_data_position_and_schedule(splits, tmp_path):
    """Two budgets add up to one training: the resumed run starts from the first run's adapter (its validation loss
    is the first run's, not the base model's), goes on from the first run's place in the data and step count, keeps
    its curves, and its manifest names the run it resumed. A changed adapter is refused by digest."""
    from agreemate_lib.training.shipping import AdapterDigestError, adapter_digest, write_manifest

    train, val = shortest(splits["seller"], 3)
    cfg = LoraTrainConfig(max_steps=2, micro_batch=1, grad_accum=1, train_examples=3, val_examples=1, eval_every=1,
                          final_eval_dialogues=1, max_minutes=0, threads=1, lr=2e-3, warmup_steps=1, patience=10)
    first = train_lora(train, val, tmp_path / "first", cfg, log=lambda *_: None)
    write_manifest(tmp_path / "first", role="seller", training_config=cfg.model_dump(), data_version="v",
                   metrics=first)
    assert first["examples_seen"] == 2 and first["validation_loss"] < first["base_validation_loss"]
    more = cfg.model_copy(update={"max_steps": 4, "resume_from": str(tmp_path / "first")})
    second = train_lora(train, val, tmp_path / "second", more, log=lambda *_: None)
    manifest = write_manifest(tmp_path / "second", role="seller", training_config=more.model_dump(),
                              data_version="v", metrics=second)
    # the resumed weights were loaded: its starting loss is the first run's (saved in bf16), far from the base's
    assert abs(second["resumed_validation_loss"] - first["validation_loss"]) < 0.02
    assert second["resumed_from_digest"] == adapter_digest(tmp_path / "first")
    assert second["steps"] == 4 and second["examples_seen"] == 4 and second["resumed_at_step"] == 2
    curves = pd.read_parquet(tmp_path / "second" / "curves.parquet")
    assert curves["step"].tolist() == [0, 1, 2, 3]
    assert manifest["previous"]["digest"] == adapter_digest(tmp_path / "first")
    # starting from an adapter (init_from) takes its weights only: steps, data order and curves start afresh
    started = cfg.model_copy(update={"max_steps": 1, "init_from": str(tmp_path / "second")})
    third = train_lora(train, val, tmp_path / "started", started, log=lambda *_: None)
    m3 = write_manifest(tmp_path / "started", role="seller", training_config=started.model_dump(),
                        data_version="w", metrics=third)
    assert abs(third["initial_validation_loss"] - second["validation_loss"]) < 0.02
    assert third["initialized_from_digest"] == adapter_digest(tmp_path / "second") == m3["previous"]["digest"]
    assert third["steps"] == 1 and third["examples_seen"] == 1 and "resumed_at_step" not in third
    assert pd.read_parquet(tmp_path / "started" / "curves.parquet")["step"].tolist() == [0]
    assert [(c.max_steps, c.init_from, c.init_digest) for c in reproduction_stages(m3)] == \
        [(1, str(tmp_path / "second"), adapter_digest(tmp_path / "second"))]
    # an adapter trained elsewhere (peft files only, no manifest or metrics) starts a run too, named by its digest
    (tmp_path / "elsewhere").mkdir()
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (tmp_path / "elsewhere" / name).write_bytes((tmp_path / "second" / name).read_bytes())
    bare = train_lora(train, val, tmp_path / "bare",
                      started.model_copy(update={"init_from": str(tmp_path / "elsewhere")}), log=lambda *_: None)
    assert bare["initialized_from_digest"] == adapter_digest(tmp_path / "second")
    with pytest.raises(ValueError, match="exclude each other"):
        train_lora(train, val, tmp_path / "both", more.model_copy(update={"init_from": str(tmp_path / "first")}))
    (tmp_path / "first" / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(AdapterDigestError):
        train_lora(train, val, tmp_path / "third", more, log=lambda *_: None)
    with pytest.raises(AdapterDigestError):
        train_lora(train, val, tmp_path / "third", started.model_copy(update={"init_from": str(tmp_path / "first")}),
                   log=lambda *_: None)
    with pytest.raises(FileNotFoundError, match="no adapter to start from"):
        train_lora(train, val, tmp_path / "third", started.model_copy(update={"init_from": str(tmp_path / "none")}),
                   log=lambda *_: None)
    # the adapter "started" began from is replaced in its folder (a retrained one shipped there, manifest and all):
    # a rebuild never starts from it silently, and rebuilding it comes first (second's chain: 2 steps, then 2 more)
    for name in ("adapter_model.safetensors", "adapter_config.json", "manifest.json"):
        (tmp_path / "second" / name).write_bytes((tmp_path / "started" / name).read_bytes())
    with pytest.raises(AdapterDigestError, match="was replaced"):
        train_lora(train, val, tmp_path / "third", reproduction_stages(m3)[-1], log=lambda *_: None)
    assert [(c.max_steps, c.init_from) for c in reproduction_stages(m3)] == \
        [(2, ""), (4, ""), (1, str(tmp_path / "second"))]


def test_reproduction_stages_follow_the_manifest_chain():
    first = {"training_config": {"max_minutes": 85.0, "lr": 1e-3}, "metrics": {"steps": 82}}
    second = {"training_config": {"max_minutes": 85.0, "lr": 1e-3, "resume_from": "/tmp/x"},
              "metrics": {"steps": 160, "resumed_at_step": 82}, "previous": first}
    stages = reproduction_stages(second)
    assert [(c.max_steps, c.max_minutes, c.resume_from) for c in stages] == [(82, 0.0, ""), (160, 0.0, "")]
    with pytest.raises(ValueError, match="chain is broken"):
        reproduction_stages(second | {"metrics": {"steps": 160, "resumed_at_step": 80}})
    # a run started from another adapter's weights begins the chain: the runs that made those weights are not rerun
    started = {"training_config": {"max_minutes": 60.0, "init_from": "adapters/x/start"}, "metrics": {"steps": 40},
               "previous": second}
    third = {"training_config": {"max_minutes": 60.0, "resume_from": "/tmp/y"},
             "metrics": {"steps": 70, "resumed_at_step": 40}, "previous": started}
    assert [(c.max_steps, c.init_from) for c in reproduction_stages(third)] == [(40, "adapters/x/start"), (70, "")]
    # ... unless that folder no longer holds the weights the run started from: then they are rebuilt first, from the
    # manifest kept as "previous", or the chain says it cannot be rebuilt
    gone = started | {"metrics": {"steps": 40, "initialized_from_digest": "0123456789abcdef"}}
    assert [(c.max_steps, c.init_from) for c in reproduction_stages(third | {"previous": gone})] == \
        [(82, ""), (160, ""), (40, "adapters/x/start"), (70, "")]
    with pytest.raises(ValueError, match="does not record how it was made"):
        reproduction_stages(third | {"previous": gone | {"previous": None}})
