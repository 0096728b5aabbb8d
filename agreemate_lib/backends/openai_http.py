"""Any OpenAI-compatible chat server (vLLM, SGLang, Ollama, llama.cpp server, TGI, OpenAI itself).

Many requests are kept in flight (asyncio, bounded concurrency) so a server with continuous batching is fed. Each
request is retried with exponential backoff on connection errors, timeouts, HTTP 429/5xx and empty or truncated
replies; after the last try it comes back as a completion with ``error`` set (the agent records a failed turn).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Literal, Optional

from pydantic import Field

from agreemate_lib.backends.base import (
    BackendConfig,
    ChatBackend,
    ChatRequest,
    Completion,
    GenerationSettings,
    request_seed,
)
from agreemate_lib.core.vocabulary import CHOOSABLE_ACTS, REPLY_KEYS

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def reply_schema(cot: bool, acts: tuple[str, ...] = (), max_chars: int = 240) -> dict:
    """JSON schema of the agent's reply, for servers' structured output (``response_format``). Free text is capped
    (``maxLength``, about 4 characters a token) so a grammar-constrained small model cannot ramble past max_tokens."""
    kinds = {
        "reasoning": {"type": "string", "maxLength": max_chars},
        "action": {"type": "string", "enum": list(acts or CHOOSABLE_ACTS)},
        "utterance": {"type": "string", "maxLength": max_chars},
        "price": {"type": ["number", "null"]},
    }
    # in the order agents write them: grammar-constrained servers emit the properties in this order
    props = {k: kinds[k] for k in (("reasoning",) if cot else ()) + REPLY_KEYS}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


#: Structured-output dialects, most specific first: OpenAI / vLLM / SGLang take ``json_schema``; llama-cpp-python's
#: server takes ``json_object`` with a ``schema``; ``none`` asks for free text (parsed with retries).
RESPONSE_FORMATS = ("json_schema", "json_object", "none")


class OpenAIConfig(BackendConfig):
    base_url: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    turn_budget_s: float = Field(180.0, gt=0, description="total time for one reply, all tries and backoff included")


class OpenAIBackend(ChatBackend):
    """Any OpenAI-compatible chat server (vLLM, SGLang, llama.cpp server, TGI, Ollama).

    If the server rejects a structured-output dialect (an error naming ``response_format``), the backend falls back
    to the next one in :data:`RESPONSE_FORMATS` for the rest of its life, and records it in ``downgrades``. The API
    key is passed in (from a Dagster resource) or read from the environment variable ``api_key_env``."""

    name = "openai"
    Config = OpenAIConfig
    needs_credentials = True

    @classmethod
    def from_spec(cls, spec, api_key: str | None = None, **_) -> OpenAIBackend:
        c = spec.backend_config()
        return cls(spec.model, base_url=c.base_url or "", api_key_env=c.api_key_env, api_key=api_key,
                   concurrency=c.concurrency, timeout_s=c.timeout_s, structured=spec.structured,
                   max_retries=spec.max_retries, response_format=c.response_format, turn_budget_s=c.turn_budget_s)

    def __init__(self, model: str, *, base_url: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8,
                 timeout_s: float = 60.0, structured: bool = True, max_retries: int = 2, backoff_s: float = 0.5,
                 response_format: str = "json_schema", api_key: str | None = None, turn_budget_s: float = 180.0):
        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}, got {response_format!r}")
        self.response_format = response_format if structured else "none"
        self.downgrades: list[str] = []
        if not base_url:
            raise ValueError("the openai backend needs base_url, e.g. http://127.0.0.1:8000/v1")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key or os.environ.get(api_key_env, "")
        self.concurrency = max(1, concurrency)
        self.timeout_s = timeout_s
        self.structured = structured
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.turn_budget_s = turn_budget_s
        self.model_id = f"openai:{model}@{self.base_url}"

    def _payload(self, req: ChatRequest, settings: GenerationSettings) -> dict:
        body: dict = {
            "model": self.model,
            "messages": req.messages,
            "max_tokens": settings.max_new_tokens + (req.reply_format.max_reasoning_tokens if req.reply_format.cot
                                                     else 0),
            "temperature": max(0.0, settings.temperature),
            "top_p": settings.top_p,
            "seed": request_seed(settings.seed, req.key) % 2**31,
        }
        schema = reply_schema(req.reply_format.cot, req.reply_format.allowed_acts,
                              4 * req.reply_format.max_utterance_tokens)
        if self.response_format == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "turn", "strict": True, "schema": schema}}
        elif self.response_format == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        return body

    def _downgrade(self, used: str, detail: str) -> None:
        if self.response_format == used and used != "none":
            nxt = RESPONSE_FORMATS[RESPONSE_FORMATS.index(used) + 1]
            self.downgrades.append(f"{used} -> {nxt}: {detail[:200]}")
            self.response_format = nxt

    async def _one(self, client, sem: asyncio.Semaphore, req: ChatRequest, settings: GenerationSettings) -> Completion:
        """One reply: transport retries with backoff inside one time budget for the whole turn."""
        async with sem:
            try:
                return await asyncio.wait_for(self._tries(client, req, settings), self.turn_budget_s)
            except TimeoutError:
                return Completion("", error=f"no reply within the turn budget of {self.turn_budget_s:g} s "
                                            f"(timeout {self.timeout_s:g} s a try, {self.max_retries + 1} tries)")

    async def _tries(self, client, req: ChatRequest, settings: GenerationSettings) -> Completion:
        import httpx

        last_error = "no attempt made"
        attempt = 0
        while attempt <= self.max_retries:
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1) * (1 + random.random() * 0.1))
            attempt += 1
            used = self.response_format
            try:
                r = await client.post(f"{self.base_url}/chat/completions", json=self._payload(req, settings))
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last_error = f"{type(exc).__name__}: {exc or 'no detail'}"
                continue
            if r.status_code >= 400 and used != "none" and "response_format" in r.text:
                self._downgrade(used, r.text)
                attempt -= 1  # the dialect, not the server, was at fault: this try does not count
                continue
            if r.status_code in RETRY_STATUS:
                last_error = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 400:
                return Completion("", error=f"HTTP {r.status_code}: {r.text[:300]}")
            try:
                data = r.json()
                choice = data["choices"][0]
                text = choice["message"].get("content") or ""
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                last_error = f"malformed response: {exc}"
                continue
            if not text.strip():
                last_error = "empty completion"
                continue
            usage = data.get("usage") or {}
            # cut off at the token limit: the model's reply, unusable; the agent re-asks (not a server fault)
            truncated = choice.get("finish_reason") == "length" and not text.rstrip().endswith("}")
            return Completion(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)),
                              structured=used != "none", truncated=truncated)
        return Completion("", error=f"failed after {self.max_retries + 1} tries: {last_error}")

    async def agenerate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=headers) as client:
            return list(await asyncio.gather(*(self._one(client, sem, r, settings) for r in requests)))

    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests, settings))
        # Called from inside an event loop (a notebook): run in a worker thread with its own loop.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            return ex.submit(asyncio.run, self.agenerate(requests, settings)).result()
