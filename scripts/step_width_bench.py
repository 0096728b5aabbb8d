"""What a decode step costs when it feeds more than one token a row (forced tokens jumping forward), on the embedded
model, with and without LoRA adapters mixed per row.

    python scripts/step_width_bench.py [--rows 8] [--context 300] [--lora]

Prints one line per step width: the median milliseconds of a step that feeds ``width`` tokens to each of ``rows``
rows over a KV cache of ``context`` tokens; ``holes``: every other row feeds one token, right-aligned, the columns
left of it masked out (as the engine's loop lays out rows with fewer forced tokens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import torch

    from agreemate_lib.backends.kv_cache import growing_cache
    from agreemate_lib.backends.models import resolve_adapter
    from agreemate_lib.backends.transformers_backend import TransformersBackend, cache_kwarg
    from agreemate_lib.core.provenance import cpu

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--context", type=int, default=300)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--lora", action="store_true", help="the shipped buyer and seller adapters, alternating rows")
    args = p.parse_args()
    if args.lora:
        backends = [TransformersBackend("smollm2", adapter=resolve_adapter(f"adapters/smollm2/{role}"))
                    for role in ("buyer", "seller")]
        names = [backends[i % 2].adapter_name for i in range(args.rows)]
    else:
        backends = [TransformersBackend("smollm2")]
        names = [None] * args.rows
    b = backends[0]
    kw = b.shared.call_kwargs(names)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (args.rows, args.context), generator=gen)
    print({"machine": cpu(), "threads": torch.get_num_threads(), "dtype": str(b.model.dtype), "lora": args.lora})

    def median_ms(width: int, holes: bool) -> float:
        past = growing_cache(b.model.config, 64)
        cache = {cache_kwarg(b.model): past}
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            b.shared.module(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **cache, **kw)
            last = torch.full((args.rows, 1), args.context - 1)
            times = []
            for _ in range(args.steps):
                step = torch.ones(args.rows, width, dtype=mask.dtype)
                if holes:
                    step[::2, : width - 1] = 0
                mask = torch.cat([mask, step], -1)
                pos = (last + step.cumsum(-1)).masked_fill(step == 0, 0)
                last = pos[:, -1:]
                t = time.perf_counter()
                b.shared.module(input_ids=ids[:, :width], attention_mask=mask, position_ids=pos, use_cache=True,
                                logits_to_keep=torch.tensor([width - 1]), **cache, **kw)  # as the engine's loop
                times.append(time.perf_counter() - t)
        return 1000 * statistics.median(times)

    for width, holes in ((1, False), (2, False), (2, True), (4, True)):
        print(f"rows {args.rows} width {width} holes {holes}: {median_ms(width, holes):.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
