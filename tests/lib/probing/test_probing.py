"""Attention probing on a 2-layer slice of the embedded model."""

import numpy as np
import pytest

from agreemate_lib.probing.heads import head_masses, message_index, probe, rank_heads, summarize_probe, tag_tokens

TEXTS = [
    "<|im_start|>user\nI want to sell my bike for $200, would you buy it? I think it is great.<|im_end|>\n"
    "<|im_start|>assistant\nI can pay 150 and take it today, I know it is used.<|im_end|>\n",
    "<|im_start|>user\nWould you take $80 for the lamp? I need it, I think.<|im_end|>\n"
    "<|im_start|>assistant\nI could sell it at 95, I see you like it, deal?<|im_end|>\n",
]


def test_tagging_by_offsets():
    text = "I sell it for $1,200 and I think so"
    offsets = [(0, 1), (1, 6), (6, 9), (9, 13), (13, 15), (15, 20), (20, 24), (24, 26), (26, 32), (32, 35)]
    tags = tag_tokens(text, offsets)
    assert list(tags) == [0, 2, 0, 0, 1, 1, 0, 0, 3, 0]


def test_head_masses_bounds_on_synthetic_attention():
    T = 6
    rng = np.random.default_rng(0)
    A = rng.random((2, T, T))
    A = np.tril(A)
    A /= A.sum(-1, keepdims=True)
    tags = np.array([2, 3, 0, 1, 2, 1])
    msg = np.array([1, 1, 1, 2, 2, 2])
    hm = head_masses([A, A], tags, msg)
    assert hm.mass_verb.shape == (2, 2)
    assert (hm.mass_verb + hm.mass_control <= 1 + 1e-9).all()
    assert (hm.ld_mass_verb <= hm.mass_verb + 1e-12).all()


@pytest.mark.slow
def test_probe_two_layer_slice(data_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agreemate_lib.backends.models import converted_dir

    path = converted_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    model.eval()
    results, kept = probe(model, tok, TEXTS)
    assert len(results) == 2 and [k["index"] for k in kept] == [0, 1]
    for r in results:
        for arr in (r.mass_verb, r.mass_control, r.ratio, r.ld_mass_verb):
            assert arr.shape == (2, 9)
        assert (r.mass_verb >= 0).all() and (r.mass_verb + r.mass_control <= 1 + 1e-6).all()
        assert r.n_price >= 2 and r.n_verb >= 2 and r.n_control >= 1
    a, b = summarize_probe(results, n_boot=200, seed=3), summarize_probe(results, n_boot=200, seed=3)
    assert a["ranking"] == b["ranking"] and len(a["ranking"]) == 18
    mean, low, high = a["ratio"]
    assert (low <= mean + 1e-9).all() and (mean <= high + 1e-9).all()
    assert rank_heads(np.array([[1.0, 2.0], [2.0, 0.5]]))[:2] == [(0, 1), (1, 0)]  # ties by layer, head
    # message index: tokens of the second message come after the first
    enc = tok(TEXTS[0], return_offsets_mapping=True, add_special_tokens=False)
    m = message_index(TEXTS[0], [tuple(o) for o in enc["offset_mapping"]])
    assert m[0] == 1 and m[-1] == 2


def test_turn_notes_are_not_prices():
    text = "[12 messages left in the negotiation.] I pay $200"
    offsets = [(0, 1), (1, 3), (3, 12), (12, 38), (38, 40), (40, 44), (44, 46), (46, 49)]
    tags = tag_tokens(text, offsets)
    assert tags[1] == 0 and tags[-1] == 1 and tags[-2] == 1
