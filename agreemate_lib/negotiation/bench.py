"""``agreemate bench``: the naive path (one dialogue at a time, full prompt every turn, as the paper ran) against
the engine (lockstep batching of every negotiation, KV-cache reuse across turns, structured decoding), on the same
scenarios, seeds and agents, in one process; plus the machine's decode ceiling and, where installed, llama.cpp."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agreemate_lib.core.scenarios import sample_scenarios
from agreemate_lib.negotiation.agents import Agent, AgentSpec
from agreemate_lib.negotiation.runner import RunConfig, run_negotiations


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


@dataclass
class PathResult:
    name: str
    wall_s: float
    negotiations: int
    turns: int
    generated_tokens: int
    prompt_tokens: int  # tokens actually prefilled
    transcripts: list
    generate_s: float = 0.0
    processor_s: float = 0.0
    calls: int = 0
    reused_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    #: Negotiations that ended in an error (no reply from the backend): their time is in the figures, so a run
    #: with errors does not measure the engine.
    errors: int = 0

    @property
    def negotiations_per_min(self) -> float:
        return 60 * self.negotiations / self.wall_s

    def summary(self) -> dict:
        return {"wall_s": round(self.wall_s, 2), "negotiations_per_min": round(self.negotiations_per_min, 2),
                "error_negotiations": self.errors,
                "turns": self.turns, "generated_tokens_per_s": round(self.generated_tokens / self.wall_s, 1),
                "prompt_tokens_per_s": round(self.prompt_tokens / self.wall_s, 1),
                "prefilled_tokens": self.prompt_tokens, "reused_prompt_tokens": self.reused_tokens,
                "generate_calls": self.calls, "generate_s": round(self.generate_s, 2),
                "structured_processor_s": round(self.processor_s, 2),
                "prefill_s": round(self.prefill_s, 2), "decode_s": round(self.decode_s, 2),
                "decode_steps": self.decode_steps,
                "generate_overhead_s": round(self.generate_s - self.prefill_s - self.decode_s - self.processor_s, 2),
                "outside_generate_s": round(self.wall_s - self.generate_s, 2)}


def _run(name, scenarios, spec, backend, cfg) -> PathResult:
    agent = Agent(spec, backend)

    def stats() -> dict:
        return {**getattr(backend, "stats", {}), **getattr(backend, "forward_stats", {})}

    s0 = stats()
    pc = getattr(backend, "prefix_cache", None)
    r0 = pc.reused_tokens if pc else 0
    t = time.perf_counter()
    negs = run_negotiations(scenarios, agent, agent, cfg)
    wall = time.perf_counter() - t
    turns = [x for n in negs for x in n.turns]
    st = stats()
    return PathResult(name, wall, len(negs), len(turns), sum(x.tokens_out for x in turns),
                      sum(x.tokens_in for x in turns),
                      [[(x.speaker, x.action, x.price, x.utterance) for x in n.turns] for n in negs],
                      st.get("generate_s", 0) - s0.get("generate_s", 0),
                      st.get("processor_s", 0) - s0.get("processor_s", 0),
                      st.get("generate_calls", 0) - s0.get("generate_calls", 0),
                      (pc.reused_tokens - r0) if pc else 0,
                      st.get("prefill_s", 0) - s0.get("prefill_s", 0), st.get("decode_s", 0) - s0.get("decode_s", 0),
                      st.get("decode_steps", 0) - s0.get("decode_steps", 0),
                      errors=sum(n.outcome == "error" for n in negs))


def _on_compute_thread(fn):
    """``fn`` runs on the process's compute thread, where the engine's batches run (timed beside them on another
    thread, a step costs ~35% more on the 2-core CPU: :mod:`agreemate_lib.backends.batching`)."""
    import functools

    from agreemate_lib.backends.batching import on_compute_thread

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return on_compute_thread(fn, *args, **kwargs)

    return run


@_on_compute_thread
def decode_ceiling(backend, batch: int = 32, new_tokens: int = 64) -> float:
    """Plain batched decode tokens/s of the model on this machine: (t(64 tokens) - t(1 token)) for a batch of 32."""
    tok, model = backend.tokenizer, backend.model
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about bicycles."}], tokenize=False,
                                     add_generation_prompt=True)
    enc = tok([prompt] * batch, return_tensors="pt", add_special_tokens=False).to(backend.device)

    def timed(n):
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, temperature=None,
                           top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        return time.perf_counter() - t

    with backend.shared.base_only():
        timed(2)  # warm-up
        t1, tn = timed(1), timed(new_tokens)
    return batch * (new_tokens - 1) / (tn - t1)


def _median_ms(fn, n: int, sync=None) -> float:
    """Median wall milliseconds of ``fn``; ``sync`` (``torch.cuda.synchronize`` on a GPU) waits for queued work, so
    a step is timed to its end and not to its launch."""
    import statistics

    def once():
        fn()
        if sync is not None:
            sync()

    once()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _profile_batch(model, b: int, context: int, steps: int, gen, int4: list | None) -> dict:
    """One batch size of :func:`decode_step_profile`."""
    dev, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    cfg = model.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    weights = [m.weight for m in _base_linears(model)]
    ids = torch.randint(0, cfg.vocab_size, (b, context), generator=gen).to(dev)
    from agreemate_lib.backends.kv_cache import growing_cache

    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        mask = torch.ones(b, context + 1, dtype=torch.long, device=dev)

        def stepper(past):
            def step():
                # the cache grows by one token per call: cropped back, so every timed step sees `context` tokens
                model(input_ids=nxt, past_key_values=past, attention_mask=mask, use_cache=True)
                past.crop(-1)
            return step

        step_ms = _median_ms(stepper(out.past_key_values), steps, sync)  # transformers' cache: grows by concatenation
        grown = growing_cache(model.config, reserve=8)
        model(input_ids=ids, past_key_values=grown, use_cache=True)
        in_place_ms = _median_ms(stepper(grown), steps, sync)  # the engine's cache: grows in place
        # the same step through transformers' own sdpa: with no padding mask it takes the enable_gqa kernel
        impl = model.config._attn_implementation
        model.set_attn_implementation("sdpa")
        try:
            gqa_ms = _median_ms(stepper(grown), steps, sync)
        finally:
            model.set_attn_implementation(impl)
        x = {w.shape[1]: torch.randn(b, w.shape[1], generator=gen).to(dev, dtype) for w in weights}
        linear_ms = _median_ms(lambda: [F.linear(x[w.shape[1]], w) for w in weights], steps, sync)
        # the attention of one query token over the cache as the step's own kernel computes it, query heads packed
        # onto their key/value head (no repeated keys): the least attention work a step can do
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        q = torch.randn(b, kv_heads, heads // kv_heads, head_dim, generator=gen).to(dev, dtype)
        k = torch.randn(b, kv_heads, context + 1, head_dim, generator=gen).to(dev, dtype)
        v = torch.randn(b, kv_heads, context + 1, head_dim, generator=gen).to(dev, dtype)
        attention_ms = _median_ms(lambda: [F.scaled_dot_product_attention(q, k, v)
                                           for _ in range(cfg.num_hidden_layers)], steps, sync)
        int4_ms = None
        if int4:
            xb = {n: t.to(torch.bfloat16) for n, t in x.items()}
            int4_ms = _median_ms(lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(xb[n], w, INT4_GROUP, sz)
                                          for w, sz, n in int4], steps, sync)
        mm_ms = linear_ms + attention_ms
    return {"batch": b, "step_ms": round(step_ms, 2), "step_ms_cache_in_place": round(in_place_ms, 2),
            "matmul_ms": round(mm_ms, 2), "linear_ms": round(linear_ms, 2), "attention_ms": round(attention_ms, 2),
            "linear_ms_int4": None if int4_ms is None else round(int4_ms, 2),
            "overhead_share": round(max(0.0, 1 - mm_ms / step_ms), 3),
            "overhead_share_cache_in_place": round(max(0.0, 1 - mm_ms / in_place_ms), 3),
            "step_ms_transformers_sdpa": round(gqa_ms, 2),
            "tokens_per_s": round(1000 * b / step_ms, 1),
            "tokens_per_s_cache_in_place": round(1000 * b / in_place_ms, 1)}


@_on_compute_thread
def decode_step_profile(backend, batches=(1, 2, 4, 8, 16, 32, 64), context: int = 300, steps: int = 8) -> list[dict]:
    """Milliseconds per decode step (one new token per row, over a KV cache of ``context`` tokens) against batch
    size, beside the bare matrix work of the same step (``matmul_ms`` = ``linear_ms`` + ``attention_ms``): every
    linear layer's weight applied to a [batch, in] activation (``F.linear``), and each layer's attention of one query
    token over the cache through PyTorch's own attention kernel with the query heads packed onto their key/value
    heads, without the modules around them. ``overhead_share`` = 1 - matmul / step: the part of a step that is not
    matrix work (Python, small element-wise operations, cache handling, masks). Each step is timed with
    transformers' cache (``step_ms``: it appends by concatenation, copying the whole cache every step) and with the
    engine's, which grows in place (``step_ms_cache_in_place``); both with the engine's attention
    (:mod:`agreemate_lib.backends.attention`), and the in-place one once more with transformers' own ``sdpa``
    (``step_ms_transformers_sdpa``: unpadded rows go through the ``enable_gqa`` kernel). ``linear_ms_int4``: the
    same linear layers through torch's CPU 4-bit weight-only kernel (groups of 32, as the embedded GGUF's Q4_1
    blocks; ``None`` off the CPU), what a 4-bit step's matrix work would cost.

    Until 2026-11-28 the attention part was timed as two bf16 batched matmuls with the keys repeated for every
    query head (on the 2-core AMD EPYC 1.6 / 5.6 / 20.4 ms at batch 1 / 8 / 32 against the kernel's 0.9 / 4.3 /
    18.4, one run), and the whole profile ran on another thread than the engine's batches, which made every
    matmul slower (:mod:`agreemate_lib.backends.batching`; docs/performance.md)."""
    gen = torch.Generator().manual_seed(0)
    with backend.shared.base_only():  # the base model, whatever adapters this process has loaded beside it
        int4 = _int4_weights(backend.model, gen)
        return [_profile_batch(backend.model, b, context, steps, gen, int4) for b in batches]


@_on_compute_thread
def step_op_profile(backend, batch: int = 8, context: int = 300, steps: int = 5, top: int = 8) -> dict:
    """Where one decode step's time goes, by PyTorch operator (``torch.profiler``, self time): ``batch`` rows, one
    new token each over a KV cache of ``context`` tokens grown in place, the engine's attention; ``steps`` steps
    profiled after a warm-up. ``ops``: the ``top`` operators by self time, in ms per step and share of the profiled
    operator time. ``step_ms``: the same step timed without the profiler (median of ``steps``), and ``python_ms`` =
    ``step_ms`` - ``operator_ms``: what is left for the modules' Python (the profiler adds its own cost to every
    operator, so ``step_ms_profiled`` is longer and this is if anything an underestimate)."""
    from torch.profiler import ProfilerActivity, profile

    from agreemate_lib.backends.kv_cache import growing_cache

    model = backend.model
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    with backend.shared.base_only(), torch.inference_mode():
        ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=gen).to(dev)
        past = growing_cache(model.config, reserve=8)
        model(input_ids=ids, past_key_values=past, use_cache=True)
        mask = torch.ones(batch, context + 1, dtype=torch.long, device=dev)

        def step():
            model(input_ids=ids[:, -1:], past_key_values=past, attention_mask=mask, use_cache=True)
            past.crop(-1)

        step_ms = _median_ms(step, steps)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        t = time.perf_counter()
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
        wall_ms = 1000 * (time.perf_counter() - t) / steps
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) / 1000 / steps
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return {"batch": batch, "context": context, "step_ms": round(step_ms, 2), "step_ms_profiled": round(wall_ms, 2),
            "operator_ms": round(total, 2), "python_ms": round(max(0.0, step_ms - total), 2),
            "ops": [{"op": e.key, "ms_per_step": round(e.self_cpu_time_total / 1000 / steps, 2),
                     "calls_per_step": e.count // steps,
                     "share": round(e.self_cpu_time_total / 1000 / steps / total, 3)} for e in events[:top]]}


#: Weights per scale and offset in the int4 figure (the GGUF's Q4_1 blocks hold 32).
INT4_GROUP = 32


def _int4_weights(model, gen) -> list | None:
    """The base's linear layers as torch's CPU int4 weight-only layout (groups of :data:`INT4_GROUP` along the input,
    a bf16 scale and offset each), for timing only: the 4-bit values are random, as a matmul's cost does not depend
    on them. ``None`` off the CPU, or where this torch has no such kernel or a layer's shape does not fit it."""
    dev = next(model.parameters()).device
    if dev.type != "cpu" or not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        return None
    out = []
    for m in _base_linears(model):
        n_out, n_in = m.weight.shape
        if n_in % (2 * INT4_GROUP):
            return None
        q = torch.randint(0, 16, (n_out, n_in), generator=gen, dtype=torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
        out.append((packed, torch.rand(n_in // INT4_GROUP, n_out, 2, generator=gen).to(torch.bfloat16), n_in))
    return out


def _base_linears(model) -> list:
    """The base model's own linear layers (LoRA's layers injected beside them left out)."""
    return [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name]


def compare(a: list, b: list) -> dict:
    same = sum(x == y for x, y in zip(a, b))
    first = None
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            k = next((j for j, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
            first = {"negotiation": i, "turn": k}
            break
    return {"identical": same, "of": len(a), "first_difference": first}


PERSONALITIES = ("", "aggressive", "fair", "passive")
#: Row-tokens a step may feed in the bench's jump-forward path (two tokens a row at 8 rows).
JUMP_BUDGET = 16


def across_pairs(scenarios, cfg: RunConfig, n_pairs: int, dtype: str) -> dict:
    """``n_pairs`` model pairs (personalities differ, so every pair's prompts differ) on the same scenarios, greedy:
    one pair after another, then all at once in one process (their calls merged into one batch per step)."""
    from agreemate_lib.backends.transformers_backend import TransformersBackend
    from agreemate_lib.negotiation.runner import run_pairs

    backend = TransformersBackend("smollm2", dtype=dtype, prefix_cache=True, batch_size=256)

    def jobs():
        return [(scenarios, Agent(AgentSpec(id=f"b{i}", temperature=0.0, personality=PERSONALITIES[i % 4]), backend),
                 Agent(AgentSpec(id=f"s{i}", temperature=0.0, personality=PERSONALITIES[(i + 1) % 4]), backend))
                for i in range(n_pairs)]

    fwd = backend.forward_stats  # the model's prefill / decode time, read around each way of running

    def timed(fn):
        f0, t = dict(fwd), time.perf_counter()
        runs = fn()
        return runs, time.perf_counter() - t, {k: fwd[k] - f0[k] for k in fwd}

    alone, wall_alone, fwd_alone = timed(lambda: [run_negotiations(sc, b, s, cfg) for sc, b, s in jobs()])
    before = backend.shared.batcher.stats.as_dict()
    together, wall_together, fwd_together = timed(lambda: run_pairs(jobs(), cfg))
    merged = backend.shared.batcher.stats.as_dict(since=before)

    def summary(runs, wall, f):
        negs = [n for r in runs for n in r]
        turns = [x for n in negs for x in n.turns]
        generated = sum(x.tokens_out for x in turns)
        return {"wall_s": round(wall, 2), "negotiations": len(negs),
                "negotiations_per_min": round(60 * len(negs) / wall, 2), "turns": len(turns),
                "generated_tokens_per_s": round(generated / wall, 1),
                "error_negotiations": sum(n.outcome == "error" for n in negs),
                # where the time went: prefill (several new tokens), decode steps and their cost, and how many
                # replies' tokens a step produced on average (rows that ended are carried to the batch's end)
                "prefill_s": round(f["prefill_s"], 2), "decode_s": round(f["decode_s"], 2),
                "decode_steps": f["decode_steps"],
                "ms_per_decode_step": round(1000 * f["decode_s"] / f["decode_steps"], 1) if f["decode_steps"] else None,
                "generated_tokens_per_step": round(generated / f["decode_steps"], 1) if f["decode_steps"] else None}

    a, b = summary(alone, wall_alone, fwd_alone), summary(together, wall_together, fwd_together)
    return {"pairs": n_pairs, "one_after_another": a, "together": b,
            "speedup": round(b["negotiations_per_min"] / a["negotiations_per_min"], 2),
            "batches_together": merged["batches"], "rows_per_batch_together": merged["mean_rows"]}


def llama_server_path(scenarios, spec: AgentSpec, cfg: RunConfig, binary: str) -> PathResult:
    """(d) llama.cpp's own server on the same GGUF, built natively for this CPU: one slot per dialogue (parallel
    slots, continuous batching), prompt caching, JSON-schema constrained replies, driven through the OpenAI-compatible
    backend with every live dialogue's request in flight at once (the ``llama-server`` roster backend)."""
    from agreemate_lib.backends.llama_server import LlamaServerBackend

    backend = LlamaServerBackend("smollm2", binary=binary, slots=len(scenarios))
    try:
        return _run("llama-server", scenarios, spec.model_copy(update={"id": "llama-server"}), backend, cfg)
    finally:
        backend.server.stop()


def llama_cpp_path(scenarios, spec: AgentSpec, cfg: RunConfig):
    """(c) llama.cpp on the same GGUF, one dialogue at a time, when llama-cpp-python is installed."""
    try:
        from agreemate_lib.backends.llama_cpp_backend import LlamaCppBackend
    except ImportError:
        return None
    try:
        backend = LlamaCppBackend()
    except ImportError:
        return None
    return _run("llama.cpp", scenarios, spec.model_copy(update={"id": "llamacpp"}), backend,
                RunConfig(**{**cfg.__dict__, "mode": "naive"}))


def run_bench(n_scenarios: int = 8, turns: int = 6, seed: int = 0, dtype: str = "auto", with_llama_cpp=True,
              with_profile: bool = True, pairs: int = 4, with_llama_server: bool = True) -> dict:
    from agreemate_lib.backends.transformers_backend import TransformersBackend

    scen = sample_scenarios("test", n_scenarios, seed).scenarios
    spec = AgentSpec(id="smollm2-greedy", temperature=0.0)
    naive_backend = TransformersBackend("smollm2", dtype=dtype, prefix_cache=False, batch_size=1,
                                       decoder="generate")
    engine_backend = TransformersBackend("smollm2", dtype=dtype, prefix_cache=True, batch_size=64)
    cfg = RunConfig(max_turns=turns, seed=seed)
    rss_before = current_rss_mib()
    engine = _run("engine", scen, spec, engine_backend, cfg)
    concat_backend = TransformersBackend("smollm2", dtype=dtype, prefix_cache=True, batch_size=64,
                                         grow_in_place=False)
    concat = _run("engine, cache by concatenation", scen, spec, concat_backend, cfg)
    via_generate = _run("engine, transformers' generate", scen, spec, TransformersBackend(
        "smollm2", dtype=dtype, prefix_cache=True, batch_size=64, decoder="generate"), cfg)
    jumping = _run("engine, forced tokens jumping forward", scen, spec, TransformersBackend(
        "smollm2", dtype=dtype, prefix_cache=True, batch_size=64, jump_budget=JUMP_BUDGET), cfg)
    naive = _run("naive", scen, spec, naive_backend, RunConfig(max_turns=turns, seed=seed, mode="naive"))
    ceiling = decode_ceiling(TransformersBackend("smollm2", dtype=dtype, prefix_cache=False))
    from agreemate_lib.core.provenance import cpu

    out = {
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processor":
                    platform.processor() or platform.machine(), "dtype": str(engine_backend.model.dtype),
                    "load_average": os.getloadavg()[0]} | cpu(),
        "scenarios": n_scenarios, "turns": turns,
        "speedup": round(engine.negotiations_per_min / naive.negotiations_per_min, 2),
        "negotiations_per_min": round(engine.negotiations_per_min, 2),
        "naive_negotiations_per_min": round(naive.negotiations_per_min, 2),
        "generated_tokens_per_s": round(engine.generated_tokens / engine.wall_s, 1),
        "prompt_tokens_per_s": round(engine.prompt_tokens / engine.wall_s, 1),
        "decode_ceiling_tokens_per_s": round(ceiling, 1),
        # decode throughput while decoding (generated tokens over time in one-token forwards) against the ceiling
        "decode_fraction_of_ceiling": round(engine.generated_tokens / engine.decode_s / ceiling, 3)
        if engine.decode_s else None,
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rss_at_start_mib": round(rss_before, 1),
        "engine": engine.summary(), "naive": naive.summary(),
        # the same engine with transformers' KV cache (appends by concatenation) instead of the in-place one
        "engine_cache_by_concatenation": concat.summary(),
        "cache_in_place_speedup": round(engine.negotiations_per_min / concat.negotiations_per_min, 2),
        # the same engine decoding through transformers' generate (ended rows stay in the batch) instead of its loop
        "engine_with_transformers_generate": via_generate.summary(),
        "own_decode_loop_speedup": round(engine.negotiations_per_min / via_generate.negotiations_per_min, 2),
        # the engine's loop with the tokens the structured machine forces fed in the step before theirs
        "engine_jump_forward": jumping.summary() | {"jump_budget": JUMP_BUDGET},
        "jump_forward_speedup": round(jumping.negotiations_per_min / engine.negotiations_per_min, 2),
        "greedy_transcripts_engine_vs_naive": compare(engine.transcripts, naive.transcripts),
    }
    if pairs > 1:
        ap = across_pairs(scen, cfg, pairs, dtype)
        out["across_pairs"] = ap
        # the engine as a study runs it: every pair at once; the naive path runs one dialogue at a time whatever
        # the number of pairs, so its rate per negotiation is the one measured above
        out["speedup_across_pairs"] = round(ap["together"]["negotiations_per_min"] / naive.negotiations_per_min, 2)
    if with_profile:
        out["decode_step_profile"] = decode_step_profile(engine_backend)
        out["decode_step_ops"] = step_op_profile(engine_backend)
    if with_llama_server:
        from agreemate_lib.backends.llama_server import LlamaServerMissing, find_binary

        try:
            binary = find_binary()
        except LlamaServerMissing:
            binary = None
        if binary is None:
            out["llama_server"] = "not built for this CPU: run bash scripts/build_llama_server.sh"
        else:
            ls = llama_server_path(scen, spec, cfg, binary)
            out["llama_server"] = ls.summary() | {"binary": binary}
            out["engine_vs_llama_server"] = {
                "negotiations_per_min": round(engine.negotiations_per_min / ls.negotiations_per_min, 2),
                "generated_tokens_per_s": round((engine.generated_tokens / engine.wall_s)
                                                / max(1e-9, ls.generated_tokens / ls.wall_s), 2)}
            if "across_pairs" in out:
                ap = out["across_pairs"]["together"]
                out["engine_vs_llama_server"]["across_pairs_negotiations_per_min"] = round(
                    ap["negotiations_per_min"] / ls.negotiations_per_min, 2)
    if with_llama_cpp:
        lc = llama_cpp_path(scen, spec, cfg)
        if lc is not None:
            out["llama_cpp"] = lc.summary()
            out["engine_vs_llama_cpp"] = round(engine.negotiations_per_min / lc.negotiations_per_min, 2)
    return out


def print_report(r: dict) -> None:
    print(f"machine: {r['machine']}")
    print(f"{r['scenarios']} scenarios x up to {r['turns']} turns, SmolLM2 buyer and seller, greedy")
    for name in ("naive", "engine", "llama_server", "llama_cpp"):
        if isinstance(r.get(name), dict):
            s = r[name]
            print(f"  {name:9s} {s['negotiations_per_min']:8.2f} negotiations/min  {s['generated_tokens_per_s']:7.1f} "
                  f"gen tok/s  {s['prompt_tokens_per_s']:8.1f} prompt tok/s  ({s['wall_s']} s, {s['generate_calls']} "
                  f"generate calls, {s['reused_prompt_tokens']} prompt tokens reused)")
    failed = {name: r[name]["error_negotiations"] for name in ("naive", "engine", "llama_server", "llama_cpp")
              if isinstance(r.get(name), dict) and r[name]["error_negotiations"]}
    if failed:
        print(f"WARNING: negotiations that ended in an error (not results; the figures above include their time): "
              f"{failed}")
    print(f"speedup engine/naive: {r['speedup']}x (KV cache in place vs by concatenation: "
          f"{r['cache_in_place_speedup']}x; own decode loop vs transformers' generate: "
          f"{r['own_decode_loop_speedup']}x; forced tokens jumping forward vs one token a step: "
          f"{r['jump_forward_speedup']}x)")
    if "across_pairs" in r:
        ap = r["across_pairs"]
        print(f"{ap['pairs']} pairs on these scenarios: one after another "
              f"{ap['one_after_another']['negotiations_per_min']} negotiations/min, together (one batch per step, "
              f"{ap['rows_per_batch_together']} rows a batch) {ap['together']['negotiations_per_min']}: "
              f"{ap['speedup']}x; together vs naive: {r['speedup_across_pairs']}x")
        for way in ("one_after_another", "together"):
            w = ap[way]
            print(f"  {way.replace('_', ' ')}: prefill {w['prefill_s']} s, decode {w['decode_s']} s "
                  f"({w['decode_steps']} steps, {w['ms_per_decode_step']} ms each, "
                  f"{w['generated_tokens_per_step']} reply tokens a step)")
    if isinstance(r.get("llama_server"), str):
        print(f"llama-server: {r['llama_server']}")
    if "engine_vs_llama_server" in r:
        print(f"engine/llama-server: {r['engine_vs_llama_server']}")
    if "engine_vs_llama_cpp" in r:
        print(f"engine/llama.cpp: {r['engine_vs_llama_cpp']}x")
    print(f"decode ceiling (batch 32 x 64 tokens): {r['decode_ceiling_tokens_per_s']} tok/s; engine decode while "
          f"generating: {r['decode_fraction_of_ceiling']} of it")
    e = r["engine"]
    print(f"engine time: prefill {e['prefill_s']} s, decode {e['decode_s']} s ({e['decode_steps']} steps), "
          f"structured-output processor {e['structured_processor_s']} s, other generate overhead "
          f"{e['generate_overhead_s']} s, outside generate {e['outside_generate_s']} s")
    if r.get("decode_step_profile"):
        print("decode step vs batch (KV cache of 300 tokens): batch, ms/step (cache by concatenation, in place; "
              "in place with transformers' sdpa), bare matmul ms (linear + attention kernel), overhead share "
              "(concatenation, in place), tok/s in place, linear ms with int4 weights")
        for row in r["decode_step_profile"]:
            print(f"  {row['batch']:3d} {row['step_ms']:8.2f} {row['step_ms_cache_in_place']:8.2f} "
                  f"{row['step_ms_transformers_sdpa']:8.2f} {row['matmul_ms']:8.2f} ({row['linear_ms']:.2f} + "
                  f"{row['attention_ms']:.2f}) "
                  f"{row['overhead_share']:6.3f} {row['overhead_share_cache_in_place']:6.3f} "
                  f"{row['tokens_per_s_cache_in_place']:8.1f} {row.get('linear_ms_int4') or float('nan'):8.2f}")
    if r.get("decode_step_ops"):
        p = r["decode_step_ops"]
        print(f"one decode step by operator (batch {p['batch']}, {p['context']} cached tokens): {p['step_ms']} ms "
              f"({p['step_ms_profiled']} ms under the profiler), {p['operator_ms']} ms in operators, "
              f"{p['python_ms']} ms left for Python")
        for o in p["ops"]:
            print(f"  {o['op']:52s} {o['ms_per_step']:7.2f} ms  {o['calls_per_step']:5d} calls  {o['share']:.3f}")
    print(f"peak RSS: {r['peak_rss_mib']} MiB")
    c = r["greedy_transcripts_engine_vs_naive"]
    why = ""
    if c["identical"] != c["of"]:
        why = f" (first difference {c['first_difference']}"
        if "bfloat16" in r["machine"]["dtype"] or "float16" in r["machine"]["dtype"]:
            why += ": half-precision rounding differs between batch/padding layouts; with --dtype fp32 the test " \
                   "suite finds them identical)"
        else:
            why += f" in {r['machine']['dtype']}: not expected; report it)"
    print(f"greedy transcripts identical: {c['identical']}/{c['of']}{why}")
