"""The engine's own decode loop: greedy search over processed scores, as transformers' ``generate`` does it, with
the rows that have ended taken out of the batch.

A batch decodes until its longest reply ends. Under ``generate`` a row whose reply has ended stays in the batch and
is fed padding every step: in the bench's four pairs run together on the 2-core CPU, a step carried ~29 rows and
generated 14-18 tokens, and there a step is compute-bound from ~16 rows up (docs/performance.md).
Here, once the rows still writing are at most ``compact_at`` of the batch, the ended rows are handed to ``compact``
(the backend keeps their keys and values for the next turn) and dropped: the KV cache, the attention mask, the
position ids, the logits processors' per-row state and the per-row forward arguments (adapters) keep the remaining
rows only. Compacting copies the remaining rows' cache once, so it is done in a few large steps, not row by row.

Everything else is ``generate``'s greedy search: positions follow the attention mask (``cumsum - 1``), each step's
scores are the last position's logits in float32, the processors run in order on (sequences so far, scores), the
next token is their argmax, an ended row is fed the pad token, and the loop stops when every row has produced the
end-of-sequence token or ``max_new_tokens`` are reached. In fp32 the transcripts equal ``generate``'s
(``tests/lib/backends/test_engine.py``). Forced tokens may also jump forward (``jump_budget``, off by default: on the
2-core CPU it lost, docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class DecodeStats:
    """What one :func:`decode` call did: model steps, the rows they carried, the tokens fed without a step of their
    own, and the compactions."""

    steps: int = 0
    row_steps: int = 0  # rows fed over all decode steps (padding of ended rows included)
    live_row_steps: int = 0  # of them, rows still writing
    forced_tokens: int = 0  # tokens the structured machine forced, fed in the step of the token before them
    compactions: int = 0
    retired: int = 0  # rows taken out before the loop ended


def decode(forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, list[int]], torch.Tensor],
           input_ids: torch.Tensor, attention_mask: torch.Tensor, cached: int, processors: list,
           *, max_new_tokens: int, eos_id: int, pad_id: int,
           compact: Callable[[dict[int, list[int]], dict[int, list[int]], list[int], torch.Tensor], None] | None = None,
           compact_at: float = 0.75, jump_budget: int = 0,
           stats: DecodeStats | None = None) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Generate up to ``max_new_tokens`` tokens for every row. Returns each row's new tokens (up to and including
    its end-of-sequence token), the KV-cache columns of those that were fed to the model, and the rows still in the
    batch at the end, in batch order.

    ``forward(ids, attention_mask, position_ids, rows)`` runs the model on ``ids`` (the tokens not in the cache yet)
    for the batch's current ``rows`` (indices into the original batch, in batch order) and returns the last
    position's logits, one row each. ``cached``: how many of ``input_ids``' columns the KV cache already holds.
    ``processors``: called as ``proc(sequences, scores)`` in order; a processor with per-row state has
    ``select(keep)``, keeping those rows.

    ``compact(ended, columns, at, keep)``: the original rows that have ended with their new tokens and those tokens'
    cache columns, their positions in the current batch, and the positions to keep; the caller keeps what it needs
    of the ended rows from its KV cache (their keys and values cover prompt and reply, end-of-sequence token
    included) and then cuts the cache down to ``keep``. Without ``compact``, or with a processor that has no
    ``select``, the batch is never compacted.

    ``jump_budget``: where a processor can say which tokens are forced after a row's token (``forced_after``, the
    structured machine: the punctuation between fields, the end of the reply), they are fed in the same step as
    the token before them, and every other processor is told how many steps it did not see (``skip``: the sampler
    draws its numbers for them, so a row's draws stay those of one step per token). A step then feeds each row its
    tokens right-aligned, the columns left of a shorter row's masked out, so every row pays for the widest: a
    step feeds at most ``jump_budget`` row-tokens (rows x width; below two per row, no jumps). Where a step costs
    about the same for a few more rows (a GPU, a small CPU batch), fewer steps is time saved; where it is
    compute-bound (a CPU batch of 16 rows and more), it is not.
    """
    stats = stats if stats is not None else DecodeStats()
    n = input_ids.shape[0]
    dev = input_ids.device
    rows = list(range(n))
    new: list[list[int]] = [[] for _ in range(n)]
    columns: list[list[int]] = [[] for _ in range(n)]
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    can_compact = compact is not None and all(hasattr(p, "select") for p in processors)
    forcer = next((p for p in processors if hasattr(p, "forced_after")), None) if jump_budget else None
    if forcer is not None and not all(p is forcer or hasattr(p, "skip") for p in processors):
        forcer = None
    seqs, mask = input_ids, attention_mask
    logits = forward(input_ids[:, cached:], mask, positions[:, cached:], rows)
    last_pos = positions[:, -1]
    width = input_ids.shape[1]  # the cache's columns once a step is fed
    writing = [True] * n
    while True:
        scores = logits.to(dtype=torch.float32, copy=True)
        for proc in processors:
            scores = proc(seqs, scores)
        nxt = scores.argmax(dim=-1).tolist()
        cap = jump_budget // len(rows) - 1 if forcer is not None else 0
        forced = forcer.forced_after(nxt, writing, [min(cap, max_new_tokens - len(new[r]) - 1) for r in rows]) \
            if cap > 0 else None
        feeds = []
        for j, r in enumerate(rows):
            if not writing[j]:
                feeds.append([pad_id])  # as generate feeds an ended row
                continue
            feed = [nxt[j]] + (forced[j] if forced else [])
            feed = feed[: max_new_tokens - len(new[r])]
            if eos_id in feed:
                feed = feed[: feed.index(eos_id) + 1]
            new[r] += feed
            feeds.append(feed)
        if forced is not None:
            skipped = [len(f) - 1 if w else 0 for f, w in zip(feeds, writing)]
            stats.forced_tokens += sum(skipped)
            for proc in processors:
                if proc is not forcer:
                    proc.skip(skipped)
        was_writing = writing
        writing = [w and f[-1] != eos_id and len(new[r]) < max_new_tokens
                   for w, f, r in zip(was_writing, feeds, rows)]
        live = sum(writing)
        if live == 0:
            break
        w = max(len(f) for f in feeds)
        ids = torch.full((len(rows), w), pad_id, dtype=torch.long)
        seen = torch.empty((len(rows), w), dtype=torch.long)  # for the processors: shorter rows repeat a token
        step_mask = torch.zeros((len(rows), w), dtype=mask.dtype)
        for j, (r, f) in enumerate(zip(rows, feeds)):
            ids[j, w - len(f):] = torch.tensor(f)
            seen[j] = f[0]
            seen[j, w - len(f):] = torch.tensor(f)
            step_mask[j, w - len(f):] = 1
            if was_writing[j]:
                columns[r] += range(width + w - len(f), width + w)
        ids, seen, step_mask = ids.to(dev), seen.to(dev), step_mask.to(dev)
        step_pos = last_pos[:, None] + step_mask.long().cumsum(-1)
        step_pos = step_pos.masked_fill(step_mask == 0, 0)
        last_pos = step_pos[:, -1]
        mask = torch.cat([mask, step_mask], dim=-1)
        seqs = torch.cat([seqs, seen], dim=-1)
        logits = forward(ids, mask, step_pos, rows)
        width += w
        stats.steps += 1
        stats.row_steps += len(rows)
        stats.live_row_steps += live
        # ended rows have now been fed their end-of-sequence token (as generate feeds it while others go on)
        if can_compact and live <= compact_at * len(rows):
            keep_list = [j for j, x in enumerate(writing) if x]
            ended = [j for j, x in enumerate(writing) if not x]
            keep = torch.tensor(keep_list, device=dev)
            compact({rows[j]: new[rows[j]] for j in ended}, {rows[j]: columns[rows[j]] for j in ended}, ended, keep)
            stats.retired += len(ended)
            stats.compactions += 1
            rows = [rows[j] for j in keep_list]
            writing = [writing[j] for j in keep_list]
            seqs, mask, last_pos, logits = seqs[keep], mask[keep], last_pos[keep], logits[keep]
            for proc in processors:
                proc.select(keep_list)
    return new, columns, rows
