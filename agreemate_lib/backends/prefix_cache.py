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
    ids: list[int]
    keys: list[torch.Tensor]  # per layer: (kv_heads, T, head_dim)
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return len(self.ids)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    def __init__(self, max_tokens: int = 64_000):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[str, CachedPrefix] = OrderedDict()
        self.reused_tokens = 0
        self.prefilled_tokens = 0

    def lookup(self, key: str, ids: list[int]) -> tuple[CachedPrefix | None, int]:
        """The entry and how many leading tokens of ``ids`` it covers (always leaving one token to feed)."""
        entry = self.entries.get(key) if key else None
        if entry is None:
            return None, 0
        self.entries.move_to_end(key)
        return entry, min(common_prefix(entry.ids, ids), len(ids) - 1)

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

    def total_tokens(self) -> int:
        return sum(e.length for e in self.entries.values())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for e in self.entries.values() for t in (*e.keys, *e.values))
