"""ms per decode step spent in the engine's two logits processors (the structured-decoding mask and the per-row
seeded sampler) against batch size, apart from the model's step: the scores are the embedded model's own logits
(one forward over a negotiation written in the agents' JSON, each row reading them from another position), every
row driven through a real reply contract (reasoning for half the rows), the chosen token fed back each step.
Sampling at temperature 0.7 and top-p 0.9, the roster's defaults.

    python scripts/logits_bench.py [--batches 1 8 32 64] [--steps 120] [--lib DIR]

``--lib DIR``: import ``agreemate_lib`` from DIR instead (a checkout of another commit, e.g. made with
``git worktree add /tmp/before COMMIT``), so two versions are timed in one run on the same machine. Prints one JSON
line per batch size.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

#: A short negotiation in the agents' reply format (its logits stand in for a decode step's scores).
DIALOGUE = [
    {"role": "system", "content": "You are the seller of a Pioneer stereo listed at $200. Your target is $200 and you "
                                  "never go below $140. Reply in JSON with reasoning, action, utterance and price."},
    {"role": "user", "content": "Hi, is the stereo still available? Would you take $120 for it? [The buyer proposes "
                                "$120.]"},
    {"role": "assistant", "content": '{"reasoning": "They are at $120; my target is $200 (never below $140). I answer '
                                     '$180, between $200 and their $120.", "action": "counter-price", "utterance": '
                                     '"It works perfectly and comes with the remote. I could do $180.", "price": 180}'},
    {"role": "user", "content": "That is more than I hoped. Could you meet me at $150 if I pick it up today? "
                                "[The buyer proposes $150.]"},
    {"role": "assistant", "content": '{"reasoning": "They are at $150; I was at $180; my target is $200 (never below '
                                     '$140). I answer $165, between $180 and their $150.", "action": "counter-price", '
                                     '"utterance": "If you come today, $165 and it is yours.", "price": 165}'},
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--lib", default=None, help="a folder holding another agreemate_lib to time")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    sys.path.insert(0, args.lib or str(Path(__file__).resolve().parent.parent))
    import torch

    import agreemate_lib
    from agreemate_lib.backends.base import ReplyFormat
    from agreemate_lib.backends.structured import TokenTable, TurnMachine, TurnMachineProcessor
    from agreemate_lib.backends.transformers_backend import RowSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    from agreemate_lib.backends.models import load_model

    tok, model = load_model("smollm2", dtype="bf16", device="cpu")
    text = tok.apply_chat_template(DIALOGUE, tokenize=False)
    with torch.inference_mode():
        logits = model(**tok(text, return_tensors="pt")).logits[0].float()
    vocab = logits.shape[1]
    table = TokenTable.build(tok, vocab)
    fmts = [ReplyFormat(cot=True, max_utterance_tokens=48, max_reasoning_tokens=48),
            ReplyFormat(max_utterance_tokens=48)]
    for b in args.batches:
        machines = [TurnMachine(table, fmts[i % 2]) for i in range(b)]
        procs = [TurnMachineProcessor(machines), RowSampler(list(range(b)), [0.7] * b, [0.9] * b)]
        ids = torch.zeros((b, 1), dtype=torch.long)
        spent = [0.0, 0.0]
        steps = 0
        for _ in range(args.steps):
            rows = [(steps + 37 * i) % logits.shape[0] for i in range(b)]
            scores = logits[rows].clone()
            for k, proc in enumerate(procs):
                t = time.perf_counter()
                scores = proc(ids, scores)
                spent[k] += time.perf_counter() - t
            ids = torch.cat([ids, scores.argmax(dim=1, keepdim=True)], dim=1)
            steps += 1
            if all(m.complete for m in machines):
                break
        print(json.dumps({"lib": str(Path(agreemate_lib.__file__).parent), "batch": b, "steps": steps,
                          "mask_ms_per_step": round(1000 * spent[0] / steps, 3),
                          "sampler_ms_per_step": round(1000 * spent[1] / steps, 3),
                          "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
