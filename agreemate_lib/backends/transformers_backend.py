"""Local models with Hugging Face transformers: real batched ``generate`` with left padding and structured output."""

from __future__ import annotations

import time
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
from agreemate_lib.backends.models import ModelLoadError, file_digest, load_model

_TABLES: dict[int, object] = {}  # structured-decoding token tables by tokenizer (one per loaded model)


def _attach_forward_timers(model) -> None:
    """Time every forward of ``model`` (once per loaded model): prefill vs one-token decode steps."""
    stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0}
    state: dict = {}

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        state["t"], state["n"] = time.perf_counter(), (ids.shape[1] if ids is not None else 1)

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
    """A logits processor that samples each row with its own generator (temperature, then nucleus top-p), and
    leaves only the sampled token: greedy search then takes it. Runs after the structured-decoding mask."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.seeds, self.temperature, self.top_p = seeds, temperature, top_p
        self.generators: list | None = None

    def __call__(self, input_ids, scores):
        import torch

        if self.generators is None:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        logits = scores.float() / max(self.temperature, 1e-5)
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
            drop = torch.cumsum(sorted_p, dim=-1) - sorted_p > self.top_p  # keep the smallest set reaching top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        out = torch.full_like(scores, torch.finfo(scores.dtype).min)
        for row, gen in enumerate(self.generators):
            choice = torch.multinomial(probs[row], 1, generator=gen)
            out[row, choice] = 0.0
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


class TransformersBackend(ChatBackend):
    """Hugging Face transformers in this process: batched lockstep generation, per-dialogue KV reuse, structured
    decoding by a per-row JSON state machine. ``model``: the embedded ``smollm2``, a local path or a hub id."""

    name = "transformers"
    Config = TransformersConfig
    supports_adapter = True
    loads_weights = True

    @classmethod
    def from_spec(cls, spec, **_) -> TransformersBackend:
        from agreemate_lib.backends.models import resolve_adapter

        c = spec.backend_config()
        return cls(spec.model, adapter=resolve_adapter(spec.adapter), dtype=c.dtype, device=c.device,
                   quantization=c.quantization, structured=spec.structured, batch_size=c.batch_size)

    def __init__(self, model: str = "smollm2", *, adapter: str | None = None, dtype: str = "auto",
                 device: str = "auto", quantization: str | None = None, structured: bool = True,
                 batch_size: int = 32, prefix_cache: bool = True, prefix_cache_tokens: int = 64_000,
                 loaded: tuple | None = None):
        self.model_name = model or "smollm2"
        self.adapter = adapter
        self.structured = structured
        self.batch_size = max(1, batch_size)
        if loaded is not None:  # a (tokenizer, model) built elsewhere (benchmarks of models built from a config)
            self.tokenizer, self.model = loaded
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        else:
            try:
                self.tokenizer, self.model = load_model(
                    self.model_name, dtype=dtype, device=device, quantization=quantization, adapter=adapter
                )
            except ModelLoadError as exc:
                raise BackendError(str(exc)) from exc
        if not hasattr(self.model, "_agreemate_forward_stats"):
            _attach_forward_timers(self.model)
        self.device = next(self.model.parameters()).device
        self.model_id = self.model_name + (f"+lora:{file_digest(adapter)}" if adapter else "")
        self._table = None
        from agreemate_lib.backends.prefix_cache import PrefixCache

        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache else None
        #: Where this backend's time goes: generate calls and the structured-output processor (Python).
        self.stats = {"generate_s": 0.0, "processor_s": 0.0, "generate_calls": 0}
        #: Model forwards split into prefill (several new tokens) and decode (one new token per row); shared by
        #: every backend on the same loaded model, since it times the model.
        self.forward_stats = self.model._agreemate_forward_stats

    def release(self, prefix_keys: list[str]) -> None:
        if self.prefix_cache is not None:
            self.prefix_cache.release(prefix_keys)

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
        prompts = [self.prompt_text(r) for r in requests]
        lengths = [len(p) for p in prompts]
        order = sorted(range(len(requests)), key=lambda i: lengths[i])  # similar lengths together: less padding
        results: list[Completion | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            outs = self._generate_batch([requests[i] for i in idx], [prompts[i] for i in idx], settings)
            for i, c in zip(idx, outs):
                results[i] = c
        return results  # type: ignore[return-value]

    def _generate_batch(self, reqs: list[ChatRequest], prompts: list[str], settings: GenerationSettings):
        import torch
        from transformers import LogitsProcessorList

        from agreemate_lib.backends.structured import (
            TurnMachine,
            TurnMachineProcessor,
            assistant_prefix,
            max_reply_tokens,
        )

        t0 = time.perf_counter()  # generate_s covers encoding and the shared-head prefill too
        enc, past, reuse = self._encode(reqs, prompts)
        gen_kwargs: dict = {
            "max_new_tokens": settings.max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "repetition_penalty": settings.repetition_penalty,
        }
        # Greedy search over processed scores; sampling happens in RowSampler, one seeded generator per request, so
        # a reply depends on its own seed (run seed, negotiation, turn, attempt), not on which rows share the batch.
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        machines = None
        if self.structured:
            machines = [TurnMachine(self.table, r.reply_format) for r in reqs]
            bound = max(max_reply_tokens(r.reply_format.cot, r.reply_format.max_utterance_tokens,
                                         r.reply_format.max_reasoning_tokens) for r in reqs)
            gen_kwargs["max_new_tokens"] = max(settings.max_new_tokens, bound)
            gen_kwargs["logits_processor"] = LogitsProcessorList([TurnMachineProcessor(machines)])
        else:
            gen_kwargs["stop_strings"] = ["}"]
            gen_kwargs["tokenizer"] = self.tokenizer
            gen_kwargs["logits_processor"] = LogitsProcessorList()
        if not settings.greedy:
            gen_kwargs["logits_processor"].append(RowSampler([request_seed(settings.seed, r.key) for r in reqs],
                                                             settings.temperature, settings.top_p))
        if past is None and self.prefix_cache is not None:
            from transformers import DynamicCache

            past = DynamicCache(config=self.model.config)
        if past is not None:
            gen_kwargs[cache_kwarg(self.model)] = past
        with torch.inference_mode():
            out = self.model.generate(**enc, **gen_kwargs)
        self.stats["generate_s"] += time.perf_counter() - t0
        self.stats["generate_calls"] += 1
        if machines:
            self.stats["processor_s"] += gen_kwargs["logits_processor"][0].elapsed
        new = out[:, enc["input_ids"].shape[1] :]
        if self.prefix_cache is not None and past is not None:
            self._store(reqs, enc, out, past)
        completions = []
        for row, req in enumerate(reqs):
            ids = new[row].tolist()
            n_out = len(ids)
            if self.tokenizer.eos_token_id in ids:
                n_out = ids.index(self.tokenizer.eos_token_id) + 1
            text = self.tokenizer.decode(ids[:n_out], skip_special_tokens=True)
            prefix = assistant_prefix(req.reply_format.cot) if self.structured else ""
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

    # -- KV-cache reuse across turns ---------------------------------------------------------------------------
    def _encode(self, reqs: list[ChatRequest], prompts: list[str]):
        """Token ids, attention mask and (when prefixes are cached) a batch KV cache covering the reused part.

        Row layout with reuse: [pad][cached prefix][pad][new tokens]; the mask zeroes the pads and position ids
        follow the mask, so every real token keeps the position it had when its keys were computed.
        """
        import torch

        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        cache = self.prefix_cache
        if cache is not None:
            self._share_common_head(reqs, ids)
        hits = [cache.lookup(r.prefix_key, x) if cache is not None else (None, 0) for r, x in zip(reqs, ids)]
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
        if cache is not None:
            cache.reused_tokens += sum(reuse)
            cache.prefilled_tokens += sum(len(x) - n for x, n in zip(ids, reuse))
        enc = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
        if P == 0:
            return enc, None, reuse
        from transformers import DynamicCache

        ref = next(e for e, n in hits if n)
        past = DynamicCache(config=self.model.config)
        for layer in range(len(ref.keys)):
            kvh, _, hd = ref.keys[layer].shape
            k = torch.zeros((len(ids), kvh, P, hd), dtype=ref.keys[layer].dtype, device=self.device)
            v = torch.zeros_like(k)
            for i, (e, n) in enumerate(hits):
                if n:
                    e.copy_into(layer, k[i, :, P - n :], v[i, :, P - n :], n)
            past.update(k, v, layer)
        return enc, past, reuse

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
            self.model(input_ids=torch.tensor([head[:n]], device=self.device), use_cache=True,
                       **{cache_kwarg(self.model): past})
        self.prefix_cache.store_shared(CachedPrefix(head[:n], [layer.keys[0].clone() for layer in past.layers],
                                                    [layer.values[0].clone() for layer in past.layers]))
        self.prefix_cache.prefilled_tokens += n

    def _store(self, reqs: list[ChatRequest], enc: dict, out, past) -> None:
        """Keep each row's real tokens (prompt and reply up to its end) with their keys and values."""
        import torch

        from agreemate_lib.backends.prefix_cache import CachedPrefix

        cached_len = past.get_seq_length()
        prompt_len = enc["input_ids"].shape[1]
        eos = self.tokenizer.eos_token_id
        for i, r in enumerate(reqs):
            if not r.prefix_key:
                continue
            gen = out[i, prompt_len:].tolist()
            n_gen = gen.index(eos) + 1 if eos in gen else len(gen)
            real = enc["attention_mask"][i].nonzero().flatten().tolist()
            positions = [p for p in real + list(range(prompt_len, prompt_len + n_gen)) if p < cached_len]
            ids = out[i, positions].tolist()
            base = self.prefix_cache.base_for(ids)
            own = positions[base.length:] if base else positions
            idx = torch.tensor(own, device=out.device)
            keys = [layer.keys[i].index_select(1, idx) for layer in past.layers]
            values = [layer.values[i].index_select(1, idx) for layer in past.layers]
            self.prefix_cache.store(r.prefix_key, CachedPrefix(ids, keys, values, base))
