"""The engine's decode attention: an unpadded one-token CPU step of a grouped-query model attends on the key/value
heads directly (transformers' packed path), never through the ``enable_gqa`` kernel, with the same numbers."""

import pytest
import torch


class _Attn(torch.nn.Module):  # what transformers' attention functions read from the calling module
    num_key_value_groups = 3
    is_causal = True
    training = False


def _reference(q, k, v, groups):
    k, v = (x.repeat_interleave(groups, dim=1).double() for x in (k, v))
    w = torch.softmax(q.double() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (w @ v).transpose(1, 2)  # [batch, query, heads, dim], as transformers' attention functions return


def test_an_unmasked_decode_step_is_packed_and_exact(monkeypatch):
    from agreemate_lib.backends.attention import packed_sdpa

    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 9, 1, 64, generator=g)
    k, v = torch.randn(4, 3, 37, 64, generator=g), torch.randn(4, 3, 37, 64, generator=g)
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    out, _ = packed_sdpa(_Attn(), q, k, v, None, scaling=64 ** -0.5)
    assert calls and not any(c.get("enable_gqa") for c in calls)  # transformers' sdpa alone would set it here
    assert torch.allclose(out.double(), _reference(q, k, v, 3), atol=1e-5)


def test_prefill_and_masked_steps_are_transformers_own(monkeypatch):
    from transformers.integrations import sdpa_attention

    from agreemate_lib.backends.attention import packed_sdpa

    seen = []
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda module, q, k, v, mask, **kw: seen.append(mask) or (q, None))
    q, k = torch.randn(2, 9, 5, 64), torch.randn(2, 3, 5, 64)
    packed_sdpa(_Attn(), q, k, k, None)  # a prefill: left alone
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    packed_sdpa(_Attn(), q[:, :, :1], k, k, mask)  # a padded batch's step: its own mask
    assert seen[0] is None and seen[1] is mask


@pytest.mark.slow
def test_the_engine_model_decodes_with_packed_attention_and_same_replies(data_dir):
    from agreemate_lib.backends.attention import NAME
    from agreemate_lib.backends.models import shared_base

    base = shared_base("smollm2", dtype="fp32").base
    assert base.config._attn_implementation == NAME
    ids = torch.randint(0, base.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    logits = {}
    with torch.inference_mode():
        for impl in ("sdpa", NAME):
            base.set_attn_implementation(impl)
            out = base(input_ids=ids, use_cache=True)
            step = base(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values, use_cache=True)
            logits[impl] = step.logits
    assert torch.allclose(logits["sdpa"], logits[NAME], atol=1e-4)
