"""Per-dialogue KV-cache reuse: a turn only prefills the tokens its prompt does not share with the last one.

Each conversation (negotiation x role) keeps the token ids and the per-layer keys/values of its last prompt plus
reply. The next prompt of that conversation is matched against them (longest common prefix of token ids), and only
the rest is fed to the model. An entry that would take a cache beyond its ``max_tokens`` is not kept; entries are
released when a negotiation ends.

Every cache on one loaded model also answers to that model's :class:`KVBudget`, one limit on the tokens all of them
keep: pairs run at once each keep their own conversations, and per-cache limits alone add up with the number of
pairs. An evicted conversation's next turn prefills its whole prompt again (slower, same reply).

Over a limit, the entry just stored goes (most recently used first), not the oldest: negotiations advance in
lockstep, so every conversation is used once a round, and evicting the least recently used would evict each one
just before its next turn (no reuse at all once the conversations exceed the limit); keeping the stored ones keeps
the reuse for as many conversations as fit.
"""

from __future__ import annotations

import threading
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


class KVBudget:
    """One limit on the conversation tokens (their own keys and values, shared heads not counted) that every
    :class:`PrefixCache` of one loaded model keeps; over it, the most recently stored entries go first (see the
    module). Its lock guards every cache that answers to it: a pair's thread releases its finished conversations
    while another thread's batch looks up and stores."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.lock = threading.RLock()
        self._order: OrderedDict[tuple[int, str], tuple[PrefixCache, int]] = OrderedDict()
        self.tokens = 0
        #: Conversations evicted to stay within the limit (each re-prefills its next prompt in full).
        self.evicted = 0

    def add(self, cache: PrefixCache, key: str, tokens: int) -> None:
        self.drop(cache, key)
        self._order[(id(cache), key)] = (cache, tokens)
        self.tokens += tokens
        while self.tokens > self.max_tokens and self._order:
            (_, k), (c, n) = self._order.popitem(last=True)
            c._forget(k)
            self.tokens -= n
            self.evicted += 1

    def drop(self, cache: PrefixCache, key: str) -> None:
        held = self._order.pop((id(cache), key), None)
        if held is not None:
            self.tokens -= held[1]


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes in every layer of a decoder with this config."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * 2 * heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def default_budget_tokens(config, dtype: torch.dtype, device: torch.device | str, share: float = 0.25) -> int:
    """A quarter of the memory free on ``device`` now (CUDA: the GPU's; else the machine's available RAM), in
    tokens of this model's keys and values: the rest is left to the batches themselves and everything else."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        import psutil

        free = psutil.virtual_memory().available
    return max(1, int(free * share) // kv_bytes_per_token(config, dtype))


class PrefixCache:
    def __init__(self, max_tokens: int = 64_000, min_shared_tokens: int = 32, budget: KVBudget | None = None):
        self.max_tokens = max_tokens
        self.min_shared_tokens = min_shared_tokens
        self.entries: OrderedDict[str, CachedPrefix] = OrderedDict()
        self.shared: dict[int, CachedPrefix] = {}
        self.reused_tokens = 0
        self.prefilled_tokens = 0
        #: The model-wide limit this cache answers to besides its own ``max_tokens`` (None: its own only).
        self.budget = budget
        self._lock = budget.lock if budget is not None else threading.RLock()
        self._tokens = 0
        self.evicted = 0  # entries not kept for this cache's own limit (the budget counts its own)

    def lookup(self, key: str, ids: list[int]) -> tuple[CachedPrefix | None, int]:
        """The entry covering most leading tokens of ``ids`` (always leaving one token to feed): the
        conversation's own entry, or a shared prefix (the common head of many conversations' prompts)."""
        with self._lock:
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
        with self._lock:
            key = hash(tuple(entry.ids))
            self.shared[key] = entry
            while len(self.shared) > 16:
                self.shared.pop(next(iter(self.shared)))

    def store(self, key: str, entry: CachedPrefix) -> None:
        if not key:
            return
        with self._lock:
            self.release([key])  # its entry of the turn before, here and in the budget
            self.entries[key] = entry
            self._tokens += entry.own_length
            if self._tokens > self.max_tokens:  # over this cache's own limit: the new entry is not kept
                self._forget(key)
                self.evicted += 1
            elif self.budget is not None:
                self.budget.add(self, key, entry.own_length)

    def release(self, keys) -> None:
        with self._lock:
            for k in keys:
                self._forget(k)
                if self.budget is not None:
                    self.budget.drop(self, k)

    def _forget(self, key: str) -> None:
        e = self.entries.pop(key, None)
        if e is not None:
            self._tokens -= e.own_length

    def base_for(self, ids: list[int]) -> CachedPrefix | None:
        """The longest shared entry that is a whole prefix of ``ids``."""
        best = None
        for e in self.shared.values():
            if e.length <= len(ids) and ids[: e.length] == e.ids and (best is None or e.length > best.length):
                best = e
        return best

    def total_tokens(self) -> int:
        with self._lock:
            return sum(e.own_length for e in self.entries.values())

    def nbytes(self) -> int:
        every = list(self.entries.values()) + list(self.shared.values())
        return sum(t.numel() * t.element_size() for e in every for t in (*e.keys, *e.values))
