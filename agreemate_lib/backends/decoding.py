"""The engine's own decode loop: greedy search over processed scores, as transformers' ``generate`` does it, with
the rows that have ended taken out of the batch.

A batch decodes until its longest reply ends. Under ``generate`` a row whose reply has ended stays in the batch and
is fed padding every step: measured on the 2-core CPU, a ~32-row step carried ~16 rows still writing, and there a
decode step is compute-bound from ~16 rows up (docs/performance.md), so half of it was spent on rows already done.
Here, once the rows still writing are at most ``compact_at`` of the batch, the ended rows are handed to ``compact``
(the backend keeps their keys and values for the next turn) and dropped: the KV cache, the attention mask, the
position ids, the logits processors' per-row state and the per-row forward arguments (adapters) keep the remaining
rows only. Compacting copies the remaining rows' cache once, so it is done in a few large steps, not row by row.

Everything else is ``generate``'s greedy search: positions follow the attention mask (``cumsum - 1``), each step's
scores are the last position's logits in float32, the processors run in order on (sequences so far, scores), the
next token is their argmax, an ended row is fed the pad token, and the loop stops when every row has produced the
end-of-sequence token or ``max_new_tokens`` are reached. In fp32 the transcripts equal ``generate``'s
(``tests/lib/backends/test_engine.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class DecodeStats:
    """What one :func:`decode` call did: model steps, the rows they carried, and the compactions."""

    steps: int = 0
    row_steps: int = 0  # rows fed over all decode steps (padding of ended rows included)
    live_row_steps: int = 0  # of them, rows still writing
    compactions: int = 0
    retired: int = 0  # rows taken out before the loop ended


def decode(forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[int]], torch.Tensor],
           input_ids: torch.Tensor, attention_mask: torch.Tensor, cached: int, processors: list,
           *, max_new_tokens: int, eos_id: int, pad_id: int,
           compact: Callable[[dict[int, list[int]], list[int], torch.Tensor], None] | None = None,
           compact_at: float = 0.75, stats: DecodeStats | None = None) -> tuple[list[list[int]], list[int]]:
    """Generate up to ``max_new_tokens`` tokens for every row. Returns each row's new tokens (up to and including
    its end-of-sequence token), and the rows still in the batch at the end, in batch order.

    ``forward(ids, attention_mask, position_ids, rows)`` runs the model on ``ids`` (the tokens not in the cache yet)
    for the batch's current ``rows`` (indices into the original batch, in batch order) and returns the last
    position's logits, one row each. ``cached``: how many of ``input_ids``' columns the KV cache already holds.
    ``compact(ended, at, keep)``: the original rows that have ended with their new tokens, their positions in the
    current batch, and the positions to keep; the caller keeps what it needs of the ended rows from its KV cache
    (their keys and values cover prompt and reply, end-of-sequence token included) and then cuts the cache down to
    ``keep``. Without ``compact``, or with a processor that has no ``select``, the batch is never compacted.
    """
    stats = stats if stats is not None else DecodeStats()
    n = input_ids.shape[0]
    rows = list(range(n))
    new: list[list[int]] = [[] for _ in range(n)]
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    can_compact = compact is not None and all(hasattr(p, "select") for p in processors)
    seqs, mask = input_ids, attention_mask
    logits = forward(input_ids[:, cached:], mask, positions[:, cached:], rows)
    last_pos = positions[:, -1:]
    writing = torch.ones(n, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        scores = logits.to(dtype=torch.float32, copy=True)
        for proc in processors:
            scores = proc(seqs, scores)
        nxt = torch.where(writing, scores.argmax(dim=-1), pad_id)
        seqs = torch.cat([seqs, nxt[:, None]], dim=-1)
        for r, tok, w in zip(rows, nxt.tolist(), writing.tolist()):
            if w:
                new[r].append(tok)
        writing = writing & (nxt != eos_id)
        live = int(writing.sum())
        if live == 0 or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        last_pos = last_pos + 1
        logits = forward(nxt[:, None], mask, last_pos, rows)
        stats.steps += 1
        stats.row_steps += len(rows)
        stats.live_row_steps += live
        # ended rows have now been fed their end-of-sequence token (as generate feeds it while others go on)
        if can_compact and live <= compact_at * len(rows):
            keep = writing.nonzero().flatten()
            ended = [i for i, w in enumerate(writing.tolist()) if not w]
            compact({rows[i]: new[rows[i]] for i in ended}, ended, keep)
            stats.retired += len(ended)
            stats.compactions += 1
            keep_list = keep.tolist()
            rows = [rows[i] for i in keep_list]
            seqs, mask, last_pos, logits = seqs[keep], mask[keep], last_pos[keep], logits[keep]
            writing = writing[keep]
            for proc in processors:
                proc.select(keep_list)
    return new, rows
