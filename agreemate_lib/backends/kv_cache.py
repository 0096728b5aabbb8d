"""A KV cache that grows in place: each decode step writes its token's keys and values into room reserved ahead.

transformers' ``DynamicLayer`` appends by ``torch.cat``, which copies the whole cache of every layer on every step:
at 32 rows and 800 cached tokens that is about half a gigabyte a step for SmolLM2 and, measured on the 2-core CPU,
more time than the model's matrix work (docs/performance.md). :class:`GrowingLayer` reserves room once (the prompt
plus the longest reply) and returns views of its buffer, so a step copies only its own new keys and values, and
attention reads only the filled length. Results are the same numbers (tests compare transcripts in fp32).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views of a buffer with room for ``reserve`` more tokens;
    it re-allocates (doubling) only if the room runs out, and re-seeds its buffer if something replaced the views
    (batch selection, beam reordering)."""

    def __init__(self, reserve: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.reserve = max(1, reserve)
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def _ours(self) -> bool:
        return (self._kbuf is not None and self.keys is not None and self.keys.numel() > 0
                and self.keys.data_ptr() == self._kbuf.data_ptr() and self.keys.shape[0] == self._kbuf.shape[0])

    def _room(self, like: torch.Tensor, n_old: int, n_new: int) -> None:
        need = n_old + n_new
        if self._ours() and need <= self._kbuf.shape[2]:
            return
        cap = max(need + self.reserve, 2 * (self._kbuf.shape[2] if self._ours() else 0))
        b, h, _, d = like.shape
        kbuf = torch.empty((b, h, cap, d), dtype=like.dtype, device=like.device)
        vbuf = torch.empty_like(kbuf)
        if n_old:
            kbuf[:, :, :n_old] = self.keys
            vbuf[:, :, :n_old] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n_old = self.get_seq_length()
        n_new = key_states.shape[-2]
        self._room(key_states, n_old, n_new)
        self._kbuf[:, :, n_old : n_old + n_new] = key_states
        self._vbuf[:, :, n_old : n_old + n_new] = value_states
        self.keys = self._kbuf[:, :, : n_old + n_new]
        self.values = self._vbuf[:, :, : n_old + n_new]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (ended rows dropped from a batch), with the same room ahead: one copy of the
        filled part, where transformers' selection would leave views that the next step copies again."""
        if not self._ours():
            return super().batch_select_indices(indices)
        n = self.get_seq_length()
        _, h, cap, d = self._kbuf.shape
        kbuf = self._kbuf.new_empty((len(indices), h, cap, d))
        vbuf = torch.empty_like(kbuf)
        kbuf[:, :, :n] = self.keys.index_select(0, indices)
        vbuf[:, :, :n] = self.values.index_select(0, indices)
        self._kbuf, self._vbuf = kbuf, vbuf
        self.keys, self.values = kbuf[:, :, :n], vbuf[:, :, :n]

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


def growing_cache(config, reserve: int) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers grow in place with room for ``reserve`` tokens
    beyond what they are first given (other layer kinds, e.g. sliding windows, are left as transformers builds them)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(reserve) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
