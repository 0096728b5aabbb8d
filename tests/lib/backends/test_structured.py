"""Structured generation on the embedded model: replies always follow the JSON contract."""

import json

import pytest

from agreemate_lib.backends.base import ChatRequest, GenerationSettings, ReplyFormat
from agreemate_lib.core.vocabulary import REPLY_KEYS
from agreemate_lib.negotiation.parsing import parse_turn

pytestmark = pytest.mark.slow

MSGS = [
    {"role": "system", "content": "You are selling a mountain bike listed at $200. Reply in JSON."},
    {"role": "user", "content": "Hi, would you take $120 for the bike?"},
]


def test_sampled_replies_are_valid_json_with_vocabulary_acts(smollm2_backend):
    reqs = [ChatRequest(list(MSGS), ReplyFormat(max_utterance_tokens=20), key=f"k{i}") for i in range(6)]
    outs = smollm2_backend.generate(reqs, GenerationSettings(temperature=1.0, seed=5))
    for c in outs:
        obj = json.loads(c.text)  # valid JSON, always
        assert tuple(obj) == REPLY_KEYS  # in the contract's order
        t = parse_turn(c.text)
        assert t.ok and t.action_known and c.structured, c.text
        assert c.tokens_out <= 20 + 40


def test_allowed_acts_and_price_digits_are_enforced(smollm2_backend):
    fmt = ReplyFormat(max_utterance_tokens=16, allowed_acts=("counter-price",), price_digits=(3, 3))
    outs = smollm2_backend.generate([ChatRequest(list(MSGS), fmt, key="a"), ChatRequest(list(MSGS), fmt, key="b")],
                                    GenerationSettings(temperature=0.8, seed=1))
    for c in outs:
        t = parse_turn(c.text)
        assert t.action == "counter-price"
        assert t.price is not None and 100 <= t.price < 1000, c.text


def test_chain_of_thought_reasoning_comes_first(smollm2_backend):
    fmt = ReplyFormat(cot=True, max_utterance_tokens=16, max_reasoning_tokens=16, allowed_acts=("offer", "inquire"))
    c = smollm2_backend.generate([ChatRequest(list(MSGS), fmt, key="c")], GenerationSettings(temperature=0.0))[0]
    obj = json.loads(c.text)
    assert list(obj)[0] == "reasoning" and obj["reasoning"]
    assert parse_turn(c.text).reasoning == obj["reasoning"].strip()


def test_greedy_is_deterministic_and_batch_matches_single():
    """In fp32; in bf16 a different batch layout can flip a near-tie (see docs/performance.md)."""
    from agreemate_lib.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend("smollm2", dtype="fp32")
    fmt = ReplyFormat(max_utterance_tokens=16)
    greedy = GenerationSettings(temperature=0.0)
    single = backend.generate([ChatRequest(list(MSGS), fmt, key="x")], greedy)[0].text
    other = [{"role": "system", "content": "You are buying a very old and rather long sofa."},
             {"role": "user", "content": "Hello! The sofa is $300, it is in good shape and comes with cushions."}]
    batch = backend.generate([ChatRequest(list(MSGS), fmt, key="x"), ChatRequest(other, fmt, key="y")], greedy)
    assert batch[0].text == single
    assert backend.generate([ChatRequest(list(MSGS), fmt, key="x")], greedy)[0].text == single


def _row_by_row(machines, scores):
    """The processor's rule applied one row at a time (what the batched mask must equal)."""
    import torch

    out = scores.clone()
    neg = torch.finfo(scores.dtype).min
    for row, m in enumerate(machines):
        allowed = m.allowed()
        if allowed is None:
            continue
        keep = torch.zeros(scores.shape[1], dtype=torch.bool)
        if isinstance(allowed, torch.Tensor):
            keep |= allowed[: scores.shape[1]]
        else:
            keep[allowed] = True
        out[row] = out[row].masked_fill(~keep, neg)
    return out


def test_batched_mask_equals_the_row_by_row_rule_at_every_step(smollm2_backend):
    """Machines in different states (reasoning text, act choice, utterance, price digits, null, closing) step through
    replies the model never wrote (random tokens drawn from each row's allowed set): at every step the one-mask
    processor leaves exactly the scores the row-by-row rule leaves."""
    import torch

    from agreemate_lib.backends.structured import TurnMachine, TurnMachineProcessor

    table = smollm2_backend.table
    fmts = [ReplyFormat(cot=True, max_utterance_tokens=6, max_reasoning_tokens=5), ReplyFormat(max_utterance_tokens=4),
            ReplyFormat(max_utterance_tokens=3, allowed_acts=("counter-price",), price_digits=(2, 3)),
            ReplyFormat(max_utterance_tokens=2, allowed_acts=("accept", "reject"))]
    machines = [TurnMachine(table, f) for f in fmts * 2]
    twins = [TurnMachine(table, f) for f in fmts * 2]
    proc = TurnMachineProcessor(machines)
    gen = torch.Generator().manual_seed(3)
    ids = torch.zeros((len(machines), 1), dtype=torch.long)
    kinds = set()
    for step in range(60):
        scores = torch.randn((len(machines), table.vocab_size), generator=gen)
        if step:
            for m, tok in zip(twins, ids[:, -1].tolist()):
                m.advance(tok)
        kinds |= {m.kind for m in twins if not m.done}
        want = _row_by_row(twins, scores)
        got = proc(ids, scores.clone())
        assert torch.equal(got, want), f"step {step}"
        nxt = got.argmax(dim=1, keepdim=True)  # an allowed token of every row
        ids = torch.cat([ids, nxt], dim=1)
    assert {"text", "choice", "number", "literal", "eos"} <= kinds
    assert all(m.complete for m in machines)


def test_row_sampler_draws_each_row_from_its_own_seed_and_distribution():
    """A row's draw depends on its seed only (not on the rows beside it); tokens of probability 0 are never drawn;
    the draws follow the softmax (frequencies within 0.02 over 4,000 draws); top-p keeps the smallest set."""
    import torch

    from agreemate_lib.backends.transformers_backend import RowSampler

    logits = torch.tensor([[0.0, 1.0, 2.0, float("-inf"), 0.5]])
    neg = torch.finfo(torch.float32).min

    def draws(seed, n, top_p=1.0, beside=0):
        s = RowSampler([seed] + [seed + 1 + i for i in range(beside)], [1.0] * (1 + beside), [top_p] * (1 + beside))
        rows = logits.repeat(1 + beside, 1).clone()
        rows[:, 3] = neg
        out = []
        for _ in range(n):
            r = s(None, rows.clone())
            assert (r == 0).sum(dim=1).eq(1).all()
            out.append(int(r[0].argmax()))
        return out

    assert draws(7, 50) == draws(7, 50, beside=5)
    many = draws(11, 4000)
    assert 3 not in many
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 0.5]), 0).tolist()
    for tok, want in zip((0, 1, 2, 4), p):
        assert abs(many.count(tok) / 4000 - want) < 0.02, (tok, many.count(tok) / 4000, want)
    assert set(draws(5, 300, top_p=0.5)) == {2}  # token 2 alone holds 0.55 of the mass


def test_row_sampler_finds_the_same_nucleus_among_candidates_as_over_the_whole_vocabulary():
    """The top-k shortcut changes no draw: with few candidates (most rows' nucleus fits, some rows' does not and are
    sorted whole) every row draws exactly the token the whole-vocabulary sort gives, step after step."""
    import torch

    from agreemate_lib.backends.transformers_backend import RowSampler

    gen = torch.Generator().manual_seed(0)
    rows, vocab = 12, 500
    seeds, temps = list(range(rows)), [0.7] * 6 + [1.0] * 6
    top_ps = [0.9, 0.5, 1.0, 0.95, 0.8, 0.99] * 2
    shortcut, whole = RowSampler(seeds, temps, top_ps, candidates=6), RowSampler(seeds, temps, top_ps, candidates=vocab)
    paths = set()
    for step in range(40):
        scores = torch.randn((rows, vocab), generator=gen) * (1 + 4 * (torch.arange(rows) % 3 == 0)).unsqueeze(1)
        a, b = shortcut(None, scores.clone()), whole(None, scores.clone())
        assert torch.equal(a.argmax(dim=1), b.argmax(dim=1)), f"step {step}"
        probs = torch.softmax(scores / torch.tensor(temps).unsqueeze(1), dim=-1)
        top = torch.topk(probs, 6).values
        paths |= set((top.sum(1) - top[:, -1] > torch.tensor(top_ps)).tolist())
    assert paths == {True, False}  # both the shortcut and the whole sort were taken


@pytest.mark.parametrize("keys", [REPLY_KEYS, ("utterance", "action", "price")])
def test_the_machine_accepts_the_training_targets_token_by_token(smollm2_backend, data_dir, keys, monkeypatch):
    """Every token of the tokenizer's own encoding of real training targets (buyer and seller, null and numeric
    prices, every act) is allowed by the machine when it comes: the decoder never forces a tokenization the adapters
    never saw. (It once forced '": ' + 'null', where the training text is '":' + ' null', so a fine-tuned agent
    almost never wrote null and every inform carried a price.) Also with the words before the act: the order is one
    setting (``REPLY_KEYS``) that targets and decoder both follow."""
    import json

    from agreemate_lib.backends import structured
    from agreemate_lib.backends.structured import TurnMachine, assistant_prefix
    from agreemate_lib.negotiation import prompts
    from agreemate_lib.training.splits import project_role_splits

    monkeypatch.setattr(structured, "REPLY_KEYS", keys)
    monkeypatch.setattr(prompts, "REPLY_KEYS", keys)

    table, tok = smollm2_backend.table, smollm2_backend.tokenizer
    prefix = tok.encode(assistant_prefix(True), add_special_tokens=False)
    fmt = ReplyFormat(cot=True, max_utterance_tokens=400, max_reasoning_tokens=400, price_digits=(1, 8))
    seen_null = seen_price = 0
    for role, df in project_role_splits(str(data_dir / "craigslist_bargains"), 0).items():
        if role == "generalist":
            continue
        for r in df[df.source == "craigslist"].head(25).itertuples():
            for m, on in zip(json.loads(r.messages), json.loads(r.train_mask)):
                if not on:
                    continue
                ids = tok.encode(m["content"], add_special_tokens=False)
                assert ids[: len(prefix)] == prefix, m["content"][:40]
                machine = TurnMachine(table, fmt)
                for k, t in enumerate(ids[len(prefix):] + [table.eos_id]):
                    allowed = machine.allowed()
                    ok = allowed is None or (bool(allowed[t]) if hasattr(allowed, "shape") else t in allowed)
                    assert ok, (m["content"], tok.decode(ids[: len(prefix) + k]), repr(table.strings[t]))
                    machine.advance(t)
                assert machine.done
                target = json.loads(m["content"])
                assert tuple(target)[1:] == keys  # after the reasoning
                price = target["price"]
                assert machine.fields["price"] == price and machine.fields["action"] == target["action"]
                seen_null += price is None
                seen_price += price is not None
    assert seen_null > 20 and seen_price > 20


def test_row_sampler_refuses_rows_without_finite_probabilities():
    """NaN scores (a numerical failure in the model) raise, as torch.multinomial did, instead of drawing a token that
    would then read as an ordinary reply."""
    import torch

    from agreemate_lib.backends.transformers_backend import RowSampler

    scores = torch.randn((3, 50))
    scores[1] = float("nan")
    for top_p in (0.9, 1.0):  # the top-k path and the whole-vocabulary path
        with pytest.raises(FloatingPointError, match="1 row"):
            RowSampler([0, 1, 2], [0.7] * 3, [top_p] * 3, candidates=8)(None, scores.clone())
    assert RowSampler([0, 1, 2], [0.7] * 3, [0.9] * 3)(None, torch.randn((3, 50))).shape == (3, 50)
