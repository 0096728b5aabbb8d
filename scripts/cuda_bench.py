"""CUDA figures for the engine on a Llama-3.2-3B-shaped model built from its config with RANDOM weights (no weights
can reach the GPU machine). Random weights make the words meaningless, but the work is the real work: structured
decoding forces the JSON contract, prompts and turns are the real ones, and every reply is generated token by token.

    python scripts/cuda_bench.py --tokenizer DIR --scenarios FILE.json [--dialogues 30 120 240] [--turns 6]

DIR: a tokenizer folder (the embedded SmolLM2's: its 49,152-token vocabulary replaces Llama 3's 128,256, so the
LM head is 151M instead of 394M parameters). FILE: scenarios as a JSON list of Scenario dicts. Prints one JSON line
per configuration: negotiations/min, generated tokens/s, turns, peak GPU memory.

Inputs for a GPU machine without the project's environment (it needs torch and transformers; pydantic travels):

    mkdir -p cuda_bench_input/site
    cp ~/.cache/agreemate/models/*/{tokenizer*.json,chat_template.jinja} cuda_bench_input/
    python -c "import json; from agreemate_lib.core.scenarios import sample_scenarios as s; json.dump([x.to_dict()
        for x in s('test', 240, 0).scenarios], open('cuda_bench_input/scenarios.json', 'w'))"
    pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d /tmp/w pydantic \
        && for w in /tmp/w/*.whl; do python -m zipfile -e $w cuda_bench_input/site/; done
    # nf4: bitsandbytes (pure Python and one shared library per CUDA version) from this project's venv, keeping
    # only the CUDA 13 libraries so it fits in what travels (~9 MB instead of 125 MB)
    cp -r .venv/lib/python3.11/site-packages/bitsandbytes* cuda_bench_input/site/ \
        && rm cuda_bench_input/site/bitsandbytes/libbitsandbytes_{cuda11,cuda12,rocm,xpu}*
    # there: PYTHONPATH=$PWD:$PWD/cuda_bench_input/site python scripts/cuda_bench.py --tokenizer cuda_bench_input \
    #        --scenarios cuda_bench_input/scenarios.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LLAMA_32_3B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                   num_key_value_heads=8, head_dim=128, rope_theta=500000.0, max_position_embeddings=131072,
                   rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=True)


def build_model(tokenizer, dtype, quantization: str | None, device: str = "cuda", layers: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = LLAMA_32_3B | ({"num_hidden_layers": layers} if layers else {})
    cfg = LlamaConfig(**shape, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    if quantization == "nf4":
        import bitsandbytes as bnb  # noqa: F401 - fails here when not installed
        from transformers import BitsAndBytesConfig

        path = Path("/tmp/random-llama-3b")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        del model
        torch.cuda.empty_cache()
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        model = LlamaForCausalLM.from_pretrained(path, quantization_config=q, device_map={"": "cuda"})
    model.eval()
    return model


PERSONALITIES = ("", "aggressive", "fair", "passive")


def run(tokenizer, model, scenarios, n: int, turns: int, label: str, grow: bool = True, pairs: int = 1,
        together: bool = True, cache_tokens: int = 10_000_000, decoder: str = "engine", jump: int = 0) -> dict:
    """``pairs`` model pairs (personalities differ, so prompts differ) over the same ``n`` scenarios: run together
    (one batch across pairs) or one pair after another. ``grow``: the KV cache grows in place, else by concat."""
    import torch

    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.negotiation.agents import Agent, AgentSpec
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations, run_pairs

    jobs = []
    for i in range(pairs):
        backend = TransformersBackend("random-llama-3.2-3b", loaded=(tokenizer, model), batch_size=n * pairs,
                                      prefix_cache_tokens=cache_tokens, grow_in_place=grow, decoder=decoder,
                                      jump_budget=jump)
        b = Agent(AgentSpec(id=f"b{i}", temperature=0.7, personality=PERSONALITIES[i % 4]), backend)
        s = Agent(AgentSpec(id=f"s{i}", temperature=0.7, personality=PERSONALITIES[(i + 1) % 4]), backend)
        jobs.append((scenarios[:n], b, s))
    cuda = next(model.parameters()).is_cuda
    fs0 = dict(getattr(model, "_agreemate_forward_stats", {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0}))
    batches0 = jobs[0][1].backend.shared.batcher.stats.as_dict()
    st0 = [dict(b.backend.stats) for _, b, _ in jobs]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    cfg = RunConfig(max_turns=turns, seed=0)
    if together:
        runs = run_pairs(jobs, cfg)
    else:
        runs = [run_negotiations(sc, b, s, cfg) for sc, b, s in jobs]
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    negs = [x for r in runs for x in r]
    all_turns = [x for g in negs for x in g.turns]
    out_tok = sum(x.tokens_out for x in all_turns)
    backend = jobs[0][1].backend
    fs = {k: backend.forward_stats[k] - fs0.get(k, 0) for k in ("prefill_s", "decode_s", "decode_steps")}
    batches = backend.shared.batcher.stats.as_dict(since=batches0)

    def spent(key):  # seconds in the logits processors over all pairs' backends (a merged call counts once a pair)
        return round(sum(b.backend.stats.get(key, 0.0) - s0.get(key, 0.0) for (_, b, _), s0 in zip(jobs, st0)), 2)

    return {"config": label, "decoder": decoder, "jump_budget": jump,
            "forced_tokens_jumped": int(spent("decode_forced_tokens")),
            "decode_rows_fed": int(spent("decode_row_steps")) or None,
            "kv_cache": "grows in place" if grow else "concatenation", "pairs": pairs,
            "pairs_run": "together" if together else "one after another", "dialogues": len(negs),
            "max_turns": turns, "prefix_cache_tokens": cache_tokens, "wall_s": round(wall, 2),
            "negotiations_per_min": round(60 * len(negs) / wall, 1), "turns": len(all_turns),
            "generated_tokens": out_tok, "generated_tokens_per_s": round(out_tok / wall, 1),
            "parse_ok": sum(x.parse_ok for x in all_turns),
            "first_error": next((x.error for x in all_turns if x.error), None), "prefill_s": round(fs["prefill_s"], 2),
            "decode_s": round(fs["decode_s"], 2), "decode_steps": fs["decode_steps"],
            "ms_per_decode_step": round(1000 * fs["decode_s"] / max(1, fs["decode_steps"]), 2),
            "batches": batches["batches"], "structured_processor_s": spent("processor_s"),
            "sampler_s": spent("sampler_s"), "generate_s": spent("generate_s"),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def step_profile(tokenizer, model, batches) -> list[dict]:
    """The engine's decode step against batch size beside its bare matrix work (``decode_step_profile``, timed to
    the end of the GPU's work)."""
    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.negotiation.bench import decode_step_profile

    backend = TransformersBackend("random-llama-3.2-3b", loaded=(tokenizer, model))
    return decode_step_profile(backend, batches=tuple(batches), context=300, steps=10)


def compiled_generate(tokenizer, model, batches, context: int = 300, new_tokens: int = 33) -> list[dict]:
    """ms per decode step of plain ``generate`` with transformers' dynamic cache (eager) against a static cache of
    fixed length, with which transformers compiles the forward on CUDA (CUDA graphs): what a compiled static-cache
    step would save. ms per step = (time of ``new_tokens`` - time of 1) / (new_tokens - 1); the first call's
    seconds include the compilation."""
    import torch
    from transformers import StaticCache

    gen = torch.Generator().manual_seed(0)
    out = []
    for b in batches:
        ids = torch.randint(0, model.config.vocab_size, (b, context), generator=gen).cuda()
        row: dict = {"batch": b, "context": context}
        for impl in ("dynamic", "static"):
            def timed(n, impl=impl, ids=ids):
                kw = {"past_key_values": StaticCache(config=model.config, max_cache_len=context + new_tokens)} \
                    if impl == "static" else {}
                torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.inference_mode():
                    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None,
                                   pad_token_id=tokenizer.pad_token_id, **kw)
                torch.cuda.synchronize()
                return time.perf_counter() - t
            try:
                row[f"{impl}_first_call_s"] = round(timed(new_tokens), 1)
                t1, tn = timed(1), timed(new_tokens)
                row[f"{impl}_ms_per_step"] = round(1000 * (tn - t1) / (new_tokens - 1), 2)
            except Exception as exc:  # noqa: BLE001 - report and go on
                row[f"{impl}_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(json.dumps({"compiled_generate": row}), flush=True)
        out.append(row)
    return out


def main() -> int:
    import torch
    from transformers import AutoTokenizer

    from agreemate_lib.core.scenarios import Scenario

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--scenarios", required=True)
    p.add_argument("--dialogues", type=int, nargs="+", default=[30, 120, 240])
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--quantization", nargs="+", default=["none", "nf4"])
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (with --layers 2)")
    p.add_argument("--layers", type=int, default=0, help="override the layer count (smoke tests)")
    p.add_argument("--compare-cache", action="store_true", help="each size also with the concatenating KV cache")
    p.add_argument("--decoders", nargs="+", default=["engine"], choices=["engine", "generate"],
                   help="each size with each: the engine's own decode loop, transformers' generate")
    p.add_argument("--jump-budgets", type=int, nargs="+", default=[0], help="each engine run with each: row-tokens "
                   "a step may feed when forced tokens jump forward (0: one token a step)")
    p.add_argument("--pairs", type=int, default=0, help="also: this many pairs over --dialogues[0] scenarios each, "
                   "one after another and then together in one batch")
    p.add_argument("--prefix-cache-tokens", type=int, default=10_000_000, help="the engine's KV prefix cache bound "
                   "(the backend's default is 64,000 tokens; 10 M keeps every conversation's cache)")
    p.add_argument("--profile", type=int, nargs="*", default=None, help="batch sizes: decode step against batch "
                   "size beside the bare matrix work, before the runs")
    p.add_argument("--compiled", type=int, nargs="*", default=None, help="batch sizes: plain generate's step with "
                   "the dynamic cache against a static cache (compiled by transformers)")
    args = p.parse_args()
    print(json.dumps({"gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                      "torch": torch.__version__,
                      "python": platform.python_version(), "cpu": platform.processor()}), flush=True)
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    scen = [Scenario(**d) for d in json.loads(Path(args.scenarios).read_text())]
    for q in args.quantization:
        try:
            model = build_model(tok, torch.bfloat16, None if q == "none" else q, args.device, args.layers)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next configuration
            print(json.dumps({"config": f"bf16+{q}", "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        label = "bf16" if q == "none" else f"{q} (bf16 compute)"
        if args.profile:
            for row in step_profile(tok, model, args.profile):
                print(json.dumps({"decode_step_profile": row, "config": label}), flush=True)
        if args.compiled:
            compiled_generate(tok, model, args.compiled)
        run(tok, model, scen, min(8, len(scen)), 2, "warm-up")
        for n in args.dialogues:
            for grow, decoder, jump in [(g, d, j) for g in ((False, True) if args.compare_cache else (True,))
                                        for d in args.decoders for j in (args.jump_budgets if d == "engine" else [0])]:
                try:
                    print(json.dumps(run(tok, model, scen, n, args.turns, label, grow=grow,
                                         cache_tokens=args.prefix_cache_tokens, decoder=decoder, jump=jump)),
                          flush=True)
                except Exception as exc:  # noqa: BLE001 - report (out of memory, say) and go on
                    print(json.dumps({"config": label, "dialogues": n, "error": f"{type(exc).__name__}: {exc}"[:500]}),
                          flush=True)
                    torch.cuda.empty_cache()
        if args.pairs > 1:
            for together in (False, True):
                print(json.dumps(run(tok, model, scen, args.dialogues[0], args.turns, label, pairs=args.pairs,
                                     together=together)), flush=True)
        del model
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
