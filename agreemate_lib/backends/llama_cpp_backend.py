"""llama.cpp in-process (llama-cpp-python) on a GGUF file: the CPU peer users know. One conversation at a time;
structured output through llama.cpp's JSON-schema grammar. Used by ``agreemate bench`` as path (c)."""

from __future__ import annotations

import os
from typing import Optional

from pydantic import Field

from agreemate_lib.backends.base import (
    BackendConfig,
    ChatBackend,
    ChatRequest,
    Completion,
    GenerationSettings,
    request_seed,
)
from agreemate_lib.backends.openai_http import reply_schema


class LlamaCppConfig(BackendConfig):
    n_ctx: int = Field(4096, ge=256)
    n_threads: Optional[int] = Field(None, ge=1)


class LlamaCppBackend(ChatBackend):
    """``model``: a GGUF file path, or ``smollm2`` for the embedded model's GGUF."""

    name = "llama-cpp"
    Config = LlamaCppConfig
    loads_weights = True

    @classmethod
    def from_spec(cls, spec, **_) -> LlamaCppBackend:
        from agreemate_lib.backends.models import EMBEDDED_ALIASES

        c = spec.backend_config()
        return cls(None if spec.model in EMBEDDED_ALIASES else spec.model, n_ctx=c.n_ctx, n_threads=c.n_threads)

    def __init__(self, gguf: str | None = None, n_ctx: int = 4096, n_threads: int | None = None):
        from llama_cpp import Llama  # ImportError when llama-cpp-python is not installed

        from agreemate_lib.backends.models import gguf_path

        path = gguf or str(gguf_path())
        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(), verbose=False)
        self.model_id = f"llama.cpp:{os.path.basename(path)}"

    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        out = []
        for req in requests:
            schema = reply_schema(req.reply_format.cot, req.reply_format.allowed_acts,
                                  4 * req.reply_format.max_utterance_tokens)
            try:
                r = self.llm.create_chat_completion(
                    messages=req.messages, response_format={"type": "json_object", "schema": schema},
                    max_tokens=settings.max_new_tokens + (req.reply_format.max_reasoning_tokens
                                                          if req.reply_format.cot else 0),
                    temperature=max(settings.temperature, 0.0), top_p=settings.top_p,
                    seed=request_seed(settings.seed, req.key) % 2**31, repeat_penalty=settings.repetition_penalty)
            except Exception as exc:  # noqa: BLE001 - a failed call becomes a failed turn
                out.append(Completion("", error=f"{type(exc).__name__}: {exc}"))
                continue
            usage = r.get("usage") or {}
            out.append(Completion(r["choices"][0]["message"].get("content") or "",
                                  int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                                  structured=True))
        return out
