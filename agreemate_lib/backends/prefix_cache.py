"""Per-dialogue KV-cache reuse: a turn only prefills the tokens its prompt does not share with the last one.

Each conversation (negotiation x role) keeps the token ids and the per-layer keys/values of its last prompt plus
reply. The next prompt of that conversation is matched against them (longest common prefix of token ids), and only
the rest is fed to the model. Entries are evicted least-recently-used beyond ``max_tokens`` and released when a
negotiation ends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class CachedPrefix:
    """Token ids and per-layer keys/values. With ``base``, the tensors hold only the positions after the base's
    tokens (a conversation stores the shared head once, not once per conversation)."""

    ids: list[int]
    keys: list[torch.Tensor]  # per layer: (kv_heads, T - len(base.ids), head_dim)
    values: list[torch.Tensor]
    base: CachedPrefix | None = None

    @property
    def length(self) -> int:
        return len(self.ids)

    @property
    def own_length(self) -> int:
        return len(self.ids) - (self.base.length if self.base else 0)

    def copy_into(self, layer: int, k_out: torch.Tensor, v_out: torch.Tensor, n: int) -> None:
        """Write the first ``n`` positions' keys/values of ``layer`` into (kv_heads, n, head_dim) views."""
        b = self.base.length if self.base else 0
        if self.base is not None and b > 0:
            m = min(n, b)
            self.base.copy_into(layer, k_out[:, :m], v_out[:, :m], m)
        if n > b:
            k_out[:, b:n] = self.keys[layer][:, : n - b]
            v_out[:, b:n] = self.values[layer][:, : n - b]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_tokens: int = 64_000, min_shared_tokens: int = 32):
        self.max_tokens = max_tokens
        self.min_shared_tokens = min_shared_tokens
        self.entries: OrderedDict[str, CachedPrefix] = OrderedDict()
        self.shared: dict[int, CachedPrefix] = {}
        self.reused_tokens = 0
        self.prefilled_tokens = 0

    def lookup(self, key: str, ids: list[int]) -> tuple[CachedPrefix | None, int]:
        """The entry covering most leading tokens of ``ids`` (always leaving one token to feed): the
        conversation's own entry, or a shared prefix (the common head of many conversations' prompts)."""
        best, best_n = None, 0
        own = self.entries.get(key) if key else None
        if own is not None:
            self.entries.move_to_end(key)
            best, best_n = own, common_prefix(own.ids, ids)
        for e in self.shared.values():
            n = common_prefix(e.ids, ids)
            if n > best_n and n >= self.min_shared_tokens:  # a few template tokens are not worth a cache
                best, best_n = e, n
        return best, min(best_n, len(ids) - 1)

    def store_shared(self, entry: CachedPrefix) -> None:
        key = hash(tuple(entry.ids))
        self.shared[key] = entry
        while len(self.shared) > 16:
            self.shared.pop(next(iter(self.shared)))

    def store(self, key: str, entry: CachedPrefix) -> None:
        if not key:
            return
        self.entries[key] = entry
        self.entries.move_to_end(key)
        while self.total_tokens() > self.max_tokens and len(self.entries) > 1:
            self.entries.popitem(last=False)

    def release(self, keys) -> None:
        for k in keys:
            self.entries.pop(k, None)

    def base_for(self, ids: list[int]) -> CachedPrefix | None:
        """The longest shared entry that is a whole prefix of ``ids``."""
        best = None
        for e in self.shared.values():
            if e.length <= len(ids) and ids[: e.length] == e.ids and (best is None or e.length > best.length):
                best = e
        return best

    def total_tokens(self) -> int:
        return sum(e.own_length for e in self.entries.values())

    def nbytes(self) -> int:
        every = list(self.entries.values()) + list(self.shared.values())
        return sum(t.numel() * t.element_size() for e in every for t in (*e.keys, *e.values))
