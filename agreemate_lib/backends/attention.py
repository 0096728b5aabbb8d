"""Attention for one-token decode steps on CPU: transformers' ``sdpa`` with grouped-query attention packed.

For a decode step (one query token per row) transformers' ``sdpa_attention_forward`` takes one of two paths for a
model with fewer key/value heads than query heads (SmolLM2: 9 query heads, 3 key/value heads): with an attention
mask (a batch with left padding) it packs the query heads onto the key/value heads and attends once per key/value
head; without one (no padding: a batch of one, or rows of equal length) it calls PyTorch's kernel with
``enable_gqa=True``, which on CPU is the slow one (the bench's decode profile on the 2-core AMD EPYC, bf16, 300
cached tokens: 51.4 against 30.0 ms a step at batch 8, 148.9 against 60.4 at batch 32, 24.9 against 23.0 at batch 1;
docs/performance.md). ``packed_sdpa`` gives such a step an all-true mask, so it takes the packed path too; a step
with a real mask, a prefill (more than one query token) and any GPU step are transformers' own, unchanged. The
numbers are those of the packed path transformers itself takes for padded batches.
"""

from __future__ import annotations

import torch

#: The attention implementation name models are switched to (registered with transformers on first use).
NAME = "agreemate_packed_sdpa"
_registered = False


def packed_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' ``sdpa_attention_forward``, with an all-true mask for an unmasked one-token CPU query of a
    grouped-query model (so it attends on the key/value heads directly instead of through the ``enable_gqa``
    kernel)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (attention_mask is None and query.shape[2] == 1 and query.device.type == "cpu"
            and getattr(module, "num_key_value_groups", 1) > 1):
        attention_mask = torch.ones((query.shape[0], 1, 1, key.shape[2]), dtype=torch.bool, device=query.device)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_packed_sdpa(model) -> bool:
    """Switch ``model`` from transformers' ``sdpa`` to :func:`packed_sdpa` (masks built as for ``sdpa``); a model on
    another implementation (``eager`` for probing, a flash kernel) is left as it is. Returns whether it switched."""
    global _registered
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, packed_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    model.set_attn_implementation(NAME)
    return True
