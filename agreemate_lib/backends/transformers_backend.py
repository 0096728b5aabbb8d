"""Local models with Hugging Face transformers: real batched ``generate`` with left padding and structured output."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import Field

from agreemate_lib.backends.base import (
    BackendConfig,
    BackendError,
    ChatBackend,
    ChatRequest,
    Completion,
    GenerationSettings,
    request_seed,
)
from agreemate_lib.backends.models import ModelLoadError, file_digest

_TABLES: dict[int, object] = {}  # structured-decoding token tables by tokenizer (one per loaded model)


def _attach_forward_timers(model) -> None:
    """Time every forward of ``model`` (once per loaded model): prefill vs one-token decode steps."""
    stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0}
    state: dict = {}

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        # a decode step of the engine's loop may feed several tokens a row (forced tokens jumping forward)
        step = getattr(module, "_agreemate_decode_step", False)
        state["t"], state["n"] = time.perf_counter(), (1 if step or ids is None else ids.shape[1])

    def post(module, args, kwargs, output):
        dt = time.perf_counter() - state.get("t", time.perf_counter())
        if state.get("n", 1) > 1:
            stats["prefill_s"] += dt
        else:
            stats["decode_s"] += dt
            stats["decode_steps"] += 1

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)
    model._agreemate_forward_stats = stats


class RowSampler:
    """A logits processor that samples each row with its own generator and its own temperature and nucleus top-p,
    and leaves only the sampled token: greedy search then takes it. Runs after the structured-decoding mask.

    Each row draws one uniform number a step from its own seeded CPU generator, so a row's reply depends on its seed
    alone, never on which rows share its batch; the token is then found for all rows at once by inverse CDF
    (``searchsorted`` over the cumulative probabilities), a fixed number of tensor operations whatever the batch.
    The nucleus is looked for among the ``candidates`` most likely tokens first (``topk``); only a row whose nucleus
    does not fit in them is sorted whole (sorting the full vocabulary of every row cost more than the model's step
    on the 2-core CPU). Either way the nucleus is the same set: the most likely tokens up to the first that brings
    the mass to ``top_p``."""

    def __init__(self, seeds: list[int], temperature: list[float], top_p: list[float], candidates: int = 256):
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.candidates = candidates
        self.generators: list | None = None
        self._per_row: tuple | None = None  # temperature and top-p columns on the scores' device, made once
        self.elapsed = 0.0

    @staticmethod
    def _pick(probs, order, u, top_p):
        """Inverse-CDF draw over each row's tokens ``probs`` (listed most likely first, ids ``order``), cut to the
        nucleus where ``top_p`` < 1."""
        import torch

        before = torch.cumsum(probs, dim=-1) - probs  # the mass of the more likely tokens
        probs = probs.masked_fill((before > top_p) & (top_p < 1.0), 0.0)
        cdf = torch.cumsum(probs.double(), dim=-1)
        bad = ~(cdf[:, -1] > 0)  # NaN scores (a numerical failure) or no token left: never a silent draw
        if bool(bad.any()):
            raise FloatingPointError(f"cannot sample: {int(bad.sum())} row(s) with no finite probability mass")
        # the first token whose cumulative probability exceeds u * total (a token of probability 0 never does)
        j = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=probs.shape[1] - 1)
        return order.gather(1, j)

    def select(self, keep: list[int]) -> None:
        """Keep rows ``keep`` (ended rows dropped from the batch): their seeds, settings and generators' states."""
        self.seeds = [self.seeds[i] for i in keep]
        self.temperature = [self.temperature[i] for i in keep]
        self.top_p = [self.top_p[i] for i in keep]
        if self.generators is not None:
            self.generators = [self.generators[i] for i in keep]
            self._per_row = tuple(t[keep] for t in self._per_row)

    def skip(self, steps: list[int]) -> None:
        """Rows whose next ``steps`` tokens were forced and fed without a step of their own: each draws the numbers
        it would have drawn at those steps, so its later draws are those of decoding one token a step."""
        import torch

        for g, k in zip(self.generators, steps):
            for _ in range(k):
                torch.rand(1, generator=g, dtype=torch.float64)

    def __call__(self, input_ids, scores):
        import torch

        t0 = time.perf_counter()
        dev = scores.device
        if self.generators is None:
            self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]
            self._per_row = (torch.tensor([max(t, 1e-5) for t in self.temperature], device=dev).unsqueeze(1),
                             torch.tensor(self.top_p, device=dev).unsqueeze(1))
        temp, top_p = self._per_row
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators]).to(dev).unsqueeze(1)
        probs = torch.softmax(scores.float() / temp, dim=-1)
        k = min(self.candidates, probs.shape[1])
        vals, order = torch.topk(probs, k, dim=-1)
        # whole-vocabulary rows: no nucleus (top_p 1), or a nucleus wider than the candidates
        whole = ((top_p >= 1.0) | (vals.sum(dim=-1, keepdim=True) - vals[:, -1:] <= top_p)).squeeze(1)
        choice = torch.empty((probs.shape[0], 1), dtype=torch.long, device=dev)
        some = ~whole
        if bool(some.any()):
            choice[some] = self._pick(vals[some], order[some], u[some], top_p[some])
        if bool(whole.any()):
            wv, wo = torch.sort(probs[whole], dim=-1, descending=True)
            choice[whole] = self._pick(wv, wo, u[whole], top_p[whole])
        out = torch.full_like(scores, torch.finfo(scores.dtype).min).scatter_(1, choice, 0.0)
        self.elapsed += time.perf_counter() - t0
        return out


class RowRepetitionPenalty:
    """transformers' repetition penalty (every token already in a row's ``input_ids``, prompt included, has its score
    divided by the penalty when positive and multiplied when negative) with one penalty per row, so rows of agents
    decoding at different penalties share a batch. The arithmetic is transformers' own
    (``RepetitionPenaltyLogitsProcessor`` on 2-D scores); a row at 1.0 keeps its scores unchanged. It runs first
    among the processors, where transformers places its own."""

    def __init__(self, penalties: list[float]):
        self.penalties = penalties
        self._column = None  # the penalties on the scores' device, made once
        self.elapsed = 0.0

    def select(self, keep: list[int]) -> None:
        """Keep rows ``keep`` (ended rows dropped from the batch)."""
        self.penalties = [self.penalties[i] for i in keep]
        if self._column is not None:
            self._column = self._column[keep]

    def skip(self, steps: list[int]) -> None:
        """Nothing to do for steps not seen: the penalty depends on the sequences alone."""

    def __call__(self, input_ids, scores):
        import torch

        t0 = time.perf_counter()
        if self._column is None:
            self._column = torch.tensor(self.penalties, dtype=scores.dtype, device=scores.device).unsqueeze(1)
        vocab = scores.shape[-1]
        ids = input_ids.clamp(max=vocab)  # ids past the output vocabulary land in a padded column, dropped after
        padded = torch.nn.functional.pad(scores, (0, 1))
        score = torch.gather(padded, 1, ids)
        score = torch.where(score < 0, score * self._column, score / self._column)
        out = padded.scatter(1, ids, score)[..., :vocab]
        self.elapsed += time.perf_counter() - t0
        return out


def cache_kwarg(model) -> str:
    """The name ``generate`` takes a KV cache under: ``cache`` from transformers 5.2x (``past_key_values`` is
    deprecated there), ``past_key_values`` before."""
    import inspect

    params = inspect.signature(model.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


class TransformersConfig(BackendConfig):
    dtype: str = "auto"
    device: str = "auto"
    quantization: Optional[Literal["nf4"]] = None
    batch_size: int = Field(32, ge=1)
    #: ``engine``: the engine's own decode loop (ended rows leave the batch); ``generate``: transformers' generate.
    decoder: Literal["engine", "generate"] = "engine"


class TransformersBackend(ChatBackend):
    """Hugging Face transformers in this process: batched lockstep generation, per-dialogue KV reuse, structured
    decoding by a per-row JSON state machine. ``model``: the embedded ``smollm2``, a local path or a hub id.

    Every backend on the same base model shares one loaded copy (:class:`~.models.SharedBase`), LoRA adapters
    included, and one :class:`~.batching.Batcher`: when several model pairs run at once (one thread each), their
    calls become one batched ``generate`` whose rows carry their own prompt, adapter, prefix cache and seed."""

    name = "transformers"
    Config = TransformersConfig
    supports_adapter = True
    loads_weights = True

    @classmethod
    def from_spec(cls, spec, **_) -> TransformersBackend:
        from agreemate_lib.backends.models import resolve_adapter

        c = spec.backend_config()
        return cls(spec.model, adapter=resolve_adapter(spec.adapter), dtype=c.dtype, device=c.device,
                   quantization=c.quantization, structured=spec.structured, batch_size=c.batch_size,
                   decoder=c.decoder)

    def __init__(self, model: str = "smollm2", *, adapter: str | None = None, dtype: str = "auto",
                 device: str = "auto", quantization: str | None = None, structured: bool = True,
                 batch_size: int = 32, prefix_cache: bool = True, prefix_cache_tokens: int = 64_000,
                 loaded: tuple | None = None, grow_in_place: bool = True, decoder: str = "engine",
                 jump_budget: int = 0):
        from agreemate_lib.backends.models import SharedBase, shared_base

        self.model_name = model or "smollm2"
        self.adapter = adapter
        self.structured = structured
        self.batch_size = max(1, batch_size)
        #: The KV cache grows in place (:mod:`.kv_cache`); False: by concatenation, as transformers does.
        self.grow_in_place = grow_in_place
        if decoder not in ("engine", "generate"):
            raise ValueError(f"decoder must be 'engine' or 'generate', not {decoder!r}")
        #: ``engine``: :mod:`.decoding`'s loop (rows that have ended leave the batch); ``generate``: transformers'
        #: ``generate`` (the naive path's, and before/after figures).
        self.decoder = decoder
        if loaded is not None:  # a (tokenizer, model) built elsewhere (benchmarks of models built from a config)
            tok, lm = loaded
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            self.shared = getattr(lm, "_agreemate_shared", None) or SharedBase(tok, lm)
            lm._agreemate_shared = self.shared
        else:
            try:
                self.shared = shared_base(self.model_name, dtype=dtype, device=device, quantization=quantization)
            except ModelLoadError as exc:
                raise BackendError(str(exc)) from exc
        #: The adapter's name on the shared base (None: the base weights).
        self.adapter_name = self.shared.add_adapter(adapter) if adapter else None
        self.tokenizer = self.shared.tokenizer
        if not hasattr(self.model, "_agreemate_forward_stats"):
            _attach_forward_timers(self.model)
        self.device = next(self.model.parameters()).device
        #: Forced tokens jump forward: the engine's loop feeds them in the step of the token before them, up to this
        #: many row-tokens a step (:func:`.decoding.decode`); 0 (the default): one token a step. On the 2-core CPU
        #: it lost (fewer steps, each dearer: docs/performance.md).
        self.jump_budget = jump_budget
        self.model_id = self.model_name + (f"+lora:{file_digest(adapter)}" if adapter else "")
        self._table = None
        from agreemate_lib.backends.prefix_cache import PrefixCache

        self.prefix_cache = PrefixCache(prefix_cache_tokens, budget=self.shared.kv_budget) if prefix_cache else None
        #: Where this backend's time goes: generate calls and the structured-output processor (Python). A call
        #: merged with other backends' calls counts whole for each of them.
        self.stats = {"generate_s": 0.0, "processor_s": 0.0, "sampler_s": 0.0, "generate_calls": 0}
        #: Model forwards split into prefill (several new tokens) and decode (one new token per row); shared by
        #: every backend on the same loaded model, since it times the model.
        self.forward_stats = self.model._agreemate_forward_stats

    @property
    def model(self):
        """The base model (its config, embeddings, timers); calls go through ``self.shared.module``."""
        return self.shared.base

    def release(self, prefix_keys: list[str]) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.release(prefix_keys)

    def batcher(self):
        return self.shared.batcher

    @property
    def table(self):
        """The tokenizer's token facts for structured decoding, built once per loaded tokenizer."""
        if self._table is None:
            from agreemate_lib.backends.structured import TokenTable

            key = id(self.tokenizer)
            if key not in _TABLES:
                _TABLES[key] = TokenTable.build(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])
            self._table = _TABLES[key]
        return self._table

    def prompt_text(self, req: ChatRequest) -> str:
        from agreemate_lib.backends.structured import assistant_prefix

        text = self.tokenizer.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        return text + (assistant_prefix(req.reply_format.cot) if self.structured else "")

    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        """Through the shared base's batcher: alone, this call runs at once; beside other pairs' threads, it joins
        their calls into one batch (calls that differ in what one ``generate`` fixes for all rows stay apart)."""
        if not requests:
            return []
        key = (settings.greedy, settings.max_new_tokens, self.structured, self.prefix_cache is not None,
               self.grow_in_place, self.decoder, self.jump_budget)
        return self.shared.batcher.submit(key, _Call(self, requests, settings), _run_calls)

    # -- one batch of rows, possibly from several backends on the same base ----------------------------------------
    def _generate_rows(self, rows: list[_Row]) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList

        from agreemate_lib.backends.structured import (
            TurnMachine,
            TurnMachineProcessor,
            assistant_prefix,
        )

        settings = rows[0].settings  # what one generate fixes for all rows is equal across them (the batcher key)
        t0 = time.perf_counter()  # generate_s covers encoding and the shared-head prefill too
        longest = settings.max_new_tokens
        if self.structured:
            longest = max(longest, *(_reply_bound(r.req) for r in rows))
        enc, past, reuse = self._encode(rows, reserve=longest)
        gen_kwargs: dict = {
            "max_new_tokens": settings.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            # the penalty is ours, per row (RowRepetitionPenalty); 1.0 keeps a model's generation_config from adding
            # its own on top
            "repetition_penalty": 1.0,
        }
        # Greedy search over processed scores; sampling happens in RowSampler, one seeded generator per request, so
        # a reply depends on its own seed (run seed, negotiation, turn, attempt), not on which rows share the batch.
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        machines = None
        # Rows may decode at different repetition penalties (one per agent): applied per row, first, as transformers
        # would apply its own.
        procs = LogitsProcessorList()
        if any(r.settings.repetition_penalty != 1.0 for r in rows):
            procs.append(RowRepetitionPenalty([r.settings.repetition_penalty for r in rows]))
        gen_kwargs["logits_processor"] = procs
        if self.structured:
            machines = [TurnMachine(self.table, r.req.reply_format) for r in rows]
            gen_kwargs["max_new_tokens"] = longest
            procs.append(TurnMachineProcessor(machines))
        else:
            gen_kwargs["stop_strings"] = ["}"]
            gen_kwargs["tokenizer"] = self.tokenizer
        if not settings.greedy:
            procs.append(RowSampler(
                [request_seed(r.settings.seed, r.req.key) for r in rows],
                [r.settings.temperature for r in rows], [r.settings.top_p for r in rows]))
        prompt_len = enc["input_ids"].shape[1]
        # the engine's loop needs the structured machine to end a reply (free-form replies stop at a string)
        engine = self.decoder == "engine" and self.structured
        if past is None and (self.prefix_cache is not None or engine):
            past = self._new_cache(prompt_len + longest)
        eos = self.tokenizer.eos_token_id
        names = [r.backend.adapter_name for r in rows]
        if engine:
            new = self._decode(rows, enc, past, reuse, procs, gen_kwargs["max_new_tokens"], names)
        else:
            if past is not None:
                gen_kwargs[cache_kwarg(self.model)] = past
            gen_kwargs.update(self.shared.call_kwargs(names))
            with torch.inference_mode():
                out = self.shared.module.generate(**enc, **gen_kwargs)
            new = [_upto(ids, eos) for ids in out[:, prompt_len:].tolist()]
            if past is not None:  # generate feeds a reply's tokens one column each, the last one only if others go on
                end = past.get_seq_length()
                cols = [list(range(prompt_len, min(prompt_len + len(x), end))) for x in new]
                self._store(rows, enc, new, cols, past, list(range(len(rows))), list(range(len(rows))))
        elapsed = time.perf_counter() - t0
        for b in _distinct_backends(rows):
            b.stats["generate_s"] += elapsed
            b.stats["generate_calls"] += 1
            for proc in procs:
                b.stats["sampler_s" if isinstance(proc, RowSampler) else "processor_s"] += getattr(proc, "elapsed", 0)
        completions = []
        for row, r in enumerate(rows):
            n_out = len(new[row])
            text = self.tokenizer.decode(new[row], skip_special_tokens=True)
            prefix = assistant_prefix(r.req.reply_format.cot) if self.structured else ""
            structured = bool(machines and machines[row].complete)
            truncated = (not machines[row].complete) if machines else ("}" not in text)
            completions.append(
                Completion(
                    text=prefix + text,
                    tokens_in=int(enc["attention_mask"][row].sum()) - reuse[row],
                    tokens_out=n_out,
                    structured=structured,
                    truncated=truncated,
                )
            )
        return completions

    def _decode(self, rows: list[_Row], enc: dict, past, reuse: list[int], procs, max_new_tokens: int,
                names: list[str | None]) -> list[list[int]]:
        """The engine's decode loop (:mod:`.decoding`): rows that have ended leave the batch, their keys and values
        kept first (when prefixes are cached)."""
        import torch

        from agreemate_lib.backends.decoding import DecodeStats, decode

        kwarg = cache_kwarg(self.model)
        calls = [0]

        def forward(ids, mask, pos, at):
            self.model._agreemate_decode_step = calls[0] > 0  # the first call is the prefill (forward timers)
            calls[0] += 1
            # the last position by index, not ``logits_to_keep=1``: with peft loaded, the slice's strided hidden states
            # sent the LM head down a batched matmul that copied its weights per row (docs/performance.md)
            out = self.shared.module(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                     logits_to_keep=torch.tensor([ids.shape[1] - 1], device=ids.device),
                                     **{kwarg: past}, **self.shared.call_kwargs([names[i] for i in at]))
            return out.logits[:, -1, :]

        def compact(ended, cols, at, keep):
            self._store([rows[i] for i in ended], enc, list(ended.values()), list(cols.values()), past, at,
                        list(ended))
            past.batch_select_indices(keep)

        stats = DecodeStats()
        try:
            with torch.inference_mode():
                new, cols, left = decode(forward, enc["input_ids"], enc["attention_mask"], max(reuse), list(procs),
                                         max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_token_id,
                                         pad_id=self.tokenizer.pad_token_id, compact=compact,
                                         jump_budget=self.jump_budget, stats=stats)
                self._store([rows[i] for i in left], enc, [new[i] for i in left], [cols[i] for i in left], past,
                            list(range(len(left))), left)
        finally:
            self.model._agreemate_decode_step = False
        for b in _distinct_backends(rows):
            for k in ("steps", "row_steps", "live_row_steps", "forced_tokens", "compactions", "retired"):
                b.stats[f"decode_{k}"] = b.stats.get(f"decode_{k}", 0) + getattr(stats, k)
        return new

    # -- KV-cache reuse across turns ---------------------------------------------------------------------------
    def _encode(self, rows: list[_Row], reserve: int = 256):
        """Token ids, attention mask and (when prefixes are cached) a batch KV cache covering the reused part; each
        row's reused keys and values come from its own backend's prefix cache (its own adapter's).

        Row layout with reuse: [pad][cached prefix][pad][new tokens]; the mask zeroes the pads and position ids
        follow the mask, so every real token keeps the position it had when its keys were computed.
        """
        import torch

        ids = [self.tokenizer(r.prompt, add_special_tokens=False)["input_ids"] for r in rows]
        for b in _distinct_backends(rows):
            if b.prefix_cache is not None:
                mine = [i for i, r in enumerate(rows) if r.backend is b]
                b._share_common_head([rows[i].req for i in mine], [ids[i] for i in mine])
        hits = [r.backend.prefix_cache.lookup(r.req.prefix_key, x) if r.backend.prefix_cache is not None
                else (None, 0) for r, x in zip(rows, ids)]
        reuse = [n for _, n in hits]
        pad = self.tokenizer.pad_token_id
        P = max(reuse)
        N = max(len(x) - n for x, n in zip(ids, reuse))
        input_ids = torch.full((len(ids), P + N), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), P + N), dtype=torch.long)
        for i, (x, n) in enumerate(zip(ids, reuse)):
            input_ids[i, P - n : P] = torch.tensor(x[:n], dtype=torch.long)
            mask[i, P - n : P] = 1
            rest = x[n:]
            input_ids[i, P + N - len(rest) :] = torch.tensor(rest, dtype=torch.long)
            mask[i, P + N - len(rest) :] = 1
        for r, x, n in zip(rows, ids, reuse):
            if r.backend.prefix_cache is not None:
                r.backend.prefix_cache.reused_tokens += n
                r.backend.prefix_cache.prefilled_tokens += len(x) - n
        enc = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        if P == 0:
            return enc, None, reuse
        ref = next(e for e, n in hits if n)
        past = self._new_cache(N + reserve)  # room for the new tokens and the reply
        for layer in range(len(ref.keys)):
            kvh, _, hd = ref.keys[layer].shape
            k = torch.zeros((len(ids), kvh, P, hd), dtype=ref.keys[layer].dtype, device=self.device)
            v = torch.zeros_like(k)
            for i, (e, n) in enumerate(hits):
                if n:
                    e.copy_into(layer, k[i, :, P - n :], v[i, :, P - n :], n)
            past.update(k, v, layer)
        return enc, past, reuse

    def _new_cache(self, reserve: int):
        """A batch KV cache: growing in place with room for ``reserve`` tokens, or (``grow_in_place=False``, for
        before/after figures) transformers' own, which appends by concatenation."""
        if self.grow_in_place:
            from agreemate_lib.backends.kv_cache import growing_cache

            return growing_cache(self.model.config, reserve)
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _share_common_head(self, reqs: list[ChatRequest], ids: list[list[int]], min_tokens: int = 32) -> None:
        """Rows with nothing cached (first turns) that start alike: prefill their common head once, as a shared
        entry every one of them then reuses (the system prompt's generic contract)."""
        import torch

        from agreemate_lib.backends.prefix_cache import CachedPrefix, common_prefix

        cold = [x for r, x in zip(reqs, ids) if self.prefix_cache.lookup(r.prefix_key, x)[1] < min_tokens]
        if len(cold) < 2:
            return
        head = cold[0]
        n = min(common_prefix(head, x) for x in cold[1:])
        if n < min_tokens:
            return
        from transformers import DynamicCache

        past = DynamicCache(config=self.model.config)
        with torch.inference_mode():
            self.shared.module(input_ids=torch.tensor([head[:n]], device=self.device), use_cache=True,
                               **{cache_kwarg(self.model): past}, **self.shared.call_kwargs([self.adapter_name]))
        self.prefix_cache.store_shared(CachedPrefix(head[:n], [layer.keys[0].clone() for layer in past.layers],
                                                    [layer.values[0].clone() for layer in past.layers]))
        self.prefix_cache.prefilled_tokens += n

    def _store(self, rows: list[_Row], enc: dict, new: list[list[int]], cols: list[list[int]], past, at: list[int],
               of: list[int]) -> None:
        """Keep each row's real tokens (prompt and the reply's tokens fed to the model) with their keys and values,
        in the row's own backend's prefix cache. ``new``: each row's reply tokens; ``cols``: the cache columns of
        those fed; ``at``: its position in the batch cache ``past``; ``of``: its row in ``enc`` (the batch as it
        started)."""
        import torch

        from agreemate_lib.backends.prefix_cache import CachedPrefix

        for r, gen, fed, b, i in zip(rows, new, cols, at, of):
            cache = r.backend.prefix_cache
            if cache is None or not r.req.prefix_key:
                continue
            real = enc["attention_mask"][i].nonzero().flatten().tolist()
            positions = real + list(fed)
            ids = enc["input_ids"][i, real].tolist() + gen[: len(fed)]
            base = cache.base_for(ids)
            own = positions[base.length:] if base else positions
            idx = torch.tensor(own, device=past.layers[0].keys.device)
            keys = [layer.keys[b].index_select(1, idx) for layer in past.layers]
            values = [layer.values[b].index_select(1, idx) for layer in past.layers]
            cache.store(r.req.prefix_key, CachedPrefix(ids, keys, values, base))


@dataclass
class _Call:
    """One backend's ``generate`` call, as handed to the batcher."""

    backend: TransformersBackend
    rows: list[ChatRequest]
    settings: GenerationSettings


@dataclass
class _Row:
    backend: TransformersBackend
    req: ChatRequest
    prompt: str
    settings: GenerationSettings


def _upto(ids: list[int], eos: int) -> list[int]:
    """A reply's tokens up to and including the end-of-sequence token (``generate`` pads after it)."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def _distinct_backends(rows: list[_Row]) -> list[TransformersBackend]:
    """The backends whose rows share a batch, each once."""
    return list({id(r.backend): r.backend for r in rows}.values())


def _reply_bound(req: ChatRequest) -> int:
    from agreemate_lib.backends.structured import max_reply_tokens

    f = req.reply_format
    return max_reply_tokens(f.cot, f.max_utterance_tokens, f.max_reasoning_tokens)


def _run_calls(calls: list[_Call]) -> list[list[Completion]]:
    """Run merged calls (same base model, same fixed generation settings) as batches of similar prompt lengths (less
    padding), at most the largest ``batch_size`` of the calls' backends a batch; each call gets its own replies.

    Rows whose replies may run to different lengths (chain-of-thought rows write a reasoning field first) go to
    different batches: a batch decodes until its longest reply ends, and a short-reply row would be carried along
    for every step of the long ones."""
    rows = [(c, k, _Row(call.backend, req, call.backend.prompt_text(req), call.settings))
            for c, call in enumerate(calls) for k, req in enumerate(call.rows)]
    rows.sort(key=lambda t: (_reply_bound(t[2].req), len(t[2].prompt)))
    size = max(call.backend.batch_size for call in calls)
    out: list[list[Completion | None]] = [[None] * len(call.rows) for call in calls]
    start = 0
    while start < len(rows):
        bound = _reply_bound(rows[start][2].req)
        end = start
        while end < len(rows) and end - start < size and _reply_bound(rows[end][2].req) == bound:
            end += 1
        chunk = rows[start:end]
        comps = chunk[0][2].backend._generate_rows([r for _, _, r in chunk])
        for (c, k, _), comp in zip(chunk, comps):
            out[c][k] = comp
        start = end
    return out  # type: ignore[return-value]
