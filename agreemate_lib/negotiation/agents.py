"""Agent specifications (what a roster line says) and agents (a spec bound to a backend)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agreemate_lib.backends.base import BackendConfig, ChatBackend, ChatRequest, GenerationSettings, ReplyFormat
from agreemate_lib.backends.models import file_digest, resolve_adapter
from agreemate_lib.backends.registry import backend_class, make_backend
from agreemate_lib.negotiation.parsing import ParsedTurn, parse_turn
from agreemate_lib.negotiation.prompts import PERSONALITIES, build_messages, system_prompt
from agreemate_lib.negotiation.state import TurnState

AGENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class AgentSpec(BaseModel):
    """One agent of the roster. Its :meth:`config_hash` changes whenever anything that shapes its replies changes.

    A roster entry is written flat: the common fields below, plus the settings of its backend (for ``openai``:
    ``base_url``, ``concurrency``, ...; see each backend's ``Config``), which are validated by that backend's typed
    config and kept in :attr:`options`."""

    model_config = ConfigDict(extra="forbid")

    id: str
    backend: str = "transformers"
    model: str = "smollm2"
    adapter: Optional[str] = None
    personality: str = ""
    cot: bool = False
    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(96, ge=1)
    repetition_penalty: float = Field(1.1, gt=0.0)
    max_utterance_tokens: int = Field(60, ge=1)
    max_reasoning_tokens: int = Field(80, ge=1)
    structured: bool = True
    max_retries: int = Field(2, ge=0, le=10)
    #: The backend's own settings (validated by its ``Config``; defaults filled in).
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    notes: str = ""

    @model_validator(mode="before")
    @classmethod
    def _gather_backend_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        common = set(cls.model_fields)
        extra = {k: v for k, v in data.items() if k not in common}
        if not extra:
            return data
        return {k: v for k, v in data.items() if k in common} | {"options": {**data.get("options", {}), **extra}}

    @model_validator(mode="after")
    def _validate_backend_options(self) -> AgentSpec:
        cls = backend_class(self.backend)
        allowed = set(cls.Config.model_fields)
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            raise ValueError(f"backend {self.backend!r} has no setting {', '.join(map(repr, unknown))}; its settings "
                             f"are {', '.join(sorted(allowed)) or '(none)'}, and every agent has "
                             f"{', '.join(k for k in type(self).model_fields if k != 'options')}")
        self.options = cls.Config(**self.options).model_dump()
        if self.adapter and not cls.supports_adapter:
            raise ValueError(f"backend {self.backend!r} cannot run a LoRA adapter (adapter: {self.adapter!r})")
        return self

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not AGENT_ID_RE.match(v):
            raise ValueError(f"agent id {v!r} must use only [a-z0-9._-] and start with a letter or digit")
        return v

    @field_validator("personality")
    @classmethod
    def _check_personality(cls, v: str) -> str:
        if v not in PERSONALITIES:
            raise ValueError(f"personality must be one of {sorted(p for p in PERSONALITIES if p)} or empty, got {v!r}")
        return v

    def backend_config(self) -> BackendConfig:
        """The backend's typed settings."""
        return backend_class(self.backend).Config(**self.options)

    def generation(self, seed: int) -> GenerationSettings:
        return GenerationSettings(self.temperature, self.top_p, self.max_new_tokens, seed, self.repetition_penalty)

    def reply_format(self, state: TurnState | None = None) -> ReplyFormat:
        if state is None:
            return ReplyFormat(self.cot, self.max_utterance_tokens, self.max_reasoning_tokens)
        return ReplyFormat(self.cot, self.max_utterance_tokens, self.max_reasoning_tokens,
                           allowed_acts=allowed_acts(state), price_digits=price_digits(state.view["listing_price"]))

    def shares_weights_with(self, other: AgentSpec) -> bool:
        """Both agents run the same backend on the same model with the same settings: one loaded copy serves both
        (only prompts differ: personality, chain-of-thought)."""
        keep = {"backend", "model", "adapter", "structured", "options"}
        return self.model_dump(include=keep) == other.model_dump(include=keep)

    def config_hash(self) -> str:
        """Content hash of everything that shapes the agent's behaviour (not its id, notes or enabled flag)."""
        payload = self.model_dump(exclude={"id", "notes", "enabled"})
        if self.adapter:
            path = resolve_adapter(self.adapter)
            if path and Path(path).exists():  # retraining the adapter changes the hash: only its pairs go stale
                payload["adapter_digest"] = file_digest(path)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def allowed_acts(state: TurnState) -> tuple[str, ...]:
    """Acts that make sense now (enforced by structured generation, so a small model cannot accept nothing):
    no accept or reject without a standing offer from the other side, no quitting in the first four turns, no
    counter or insist before any price is on the table, no init-price once this side has named a price, intro
    only in the first two turns."""
    from agreemate_lib.core.vocabulary import CHOOSABLE_ACTS

    drop = set()
    if state.other_last_price is None:
        drop |= {"accept", "reject"}
    if state.turn < 4:
        drop.add("quit")
    if state.other_last_price is None and state.own_last_price is None:
        drop |= {"counter-price", "insist"}
    if state.own_priced_turns > 0:
        drop.add("init-price")
    if state.turn >= 2:
        drop.add("intro")
    return tuple(a for a in CHOOSABLE_ACTS if a not in drop)


def price_digits(listing_price: float) -> tuple[int, int]:
    """Integer digits a price may have: from a fifth of the listing to twice the listing (a $8,900 car: 4 to 5)."""
    def digits(x: float) -> int:
        return len(str(int(max(1.0, x))))

    return digits(0.2 * listing_price), digits(2.0 * listing_price)



#: Shorthand prefixes that are not registry names.
SHORTHAND_ALIASES = {"hf": "transformers"}


def parse_agent_shorthand(spec: str) -> AgentSpec:
    """CLI shorthand: ``smollm2[-cot][-aggressive|-fair|-passive][-greedy]``, ``rule-based``, or
    ``BACKEND:MODEL[@BASE_URL]`` for any registered backend (``hf:`` means ``transformers:``), e.g.
    ``hf:PATH_OR_ID``, ``openai:MODEL@http://host:port/v1``, ``llama-cpp:FILE.gguf``."""
    from agreemate_lib.backends.registry import BACKENDS

    s = spec.strip()
    if s in ("rule", "rule-based", "rules"):
        return AgentSpec(id="rule-based", backend="rule-based", model="rule-based")
    prefix, sep, rest = s.partition(":")
    if sep and (prefix in BACKENDS or prefix in SHORTHAND_ALIASES):
        backend = SHORTHAND_ALIASES.get(prefix, prefix)
        model, _, url = rest.partition("@")
        options = {"base_url": url} if url else {}
        if backend == "openai" and not url:
            raise ValueError(f"openai agent needs a base URL: openai:MODEL@http://host:port/v1, got {spec!r}")
        return AgentSpec(id=_slug(model), backend=backend, model=model, **options)
    base, *mods = s.split("-")
    if base in ("smollm2", "embedded"):
        kw: dict[str, Any] = {}
        for m in mods:
            if m == "cot":
                kw["cot"] = True
            elif m in PERSONALITIES:
                kw["personality"] = m
            elif m == "greedy":
                kw["temperature"] = 0.0
            else:
                raise ValueError(f"unknown modifier {m!r} in agent {spec!r} (cot, greedy, aggressive, fair, passive)")
        return AgentSpec(id=s, backend="transformers", model="smollm2", **kw)
    raise ValueError(
        f"unknown agent {spec!r}: use a roster id, smollm2[-cot][-aggressive|-fair|-passive][-greedy], rule-based, "
        f"or BACKEND:MODEL[@BASE_URL] with BACKEND one of {', '.join([*BACKENDS, *SHORTHAND_ALIASES])}"
    )


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", s.lower()).strip("-.") or "agent"


class Agent:
    """A spec bound to a backend: builds prompts, asks in batches, parses, re-asks on unusable replies."""

    def __init__(self, spec: AgentSpec, backend: ChatBackend | None = None):
        self.spec = spec
        self.backend = backend or make_backend(spec)

    @property
    def id(self) -> str:
        return self.spec.id

    def requests_for(self, states: list[TurnState]) -> list[ChatRequest]:
        out = []
        for st in states:
            sys = system_prompt(st.role, st.view, self.spec.personality, self.spec.cot, st.max_turns)
            msgs = build_messages(st.role, sys, st.history, st.max_turns, st.opens)
            out.append(ChatRequest(msgs, self.spec.reply_format(st), context=st,
                                   key=f"{st.negotiation_id}|{st.turn}",
                                   prefix_key=f"{st.negotiation_id}|{st.role}"))
        return out

    def act(self, states: list[TurnState], seed: int) -> list[tuple[ParsedTurn, dict[str, Any]]]:
        """One turn for every state: (parsed turn, provenance) pairs, in order. Never raises.

        Two kinds of failure, kept apart: an **unusable reply** (cut off, unparseable, an unknown act) is re-asked
        up to ``max_retries`` times and then recorded as a parse failure; a **backend failure** (the backend raised,
        or returned an error after its own transport retries and time budget) is not re-asked here (one retry layer)
        and comes back with ``info["backend_error"]`` set, which ends the negotiation as ``error``."""
        reqs = self.requests_for(states)
        results: list[tuple[ParsedTurn, dict[str, Any]] | None] = [None] * len(reqs)
        pending = list(range(len(reqs)))
        attempt = 0
        info = [{"raw": "", "retries": 0, "tokens_in": 0, "tokens_out": 0, "structured": False,
                 "backend_error": False} for _ in reqs]
        while pending:
            batch = [reqs[i] for i in pending]
            for r in batch:
                r.key = r.key.rsplit("#", 1)[0] + f"#{attempt}"
            try:
                comps = self.backend.generate(batch, self.spec.generation(seed))
            except Exception as exc:  # noqa: BLE001 - a backend failure becomes a failed turn, not a crash
                comps = None
                err = f"{type(exc).__name__}: {exc}"
            still = []
            if comps is not None and len(comps) != len(batch):
                comps, err = None, f"backend returned {len(comps)} replies for {len(batch)} requests"
            for k, i in enumerate(pending):
                c_text, c_struct = "", False
                if comps is None or comps[k].error:
                    failure = err if comps is None else comps[k].error
                    parsed = ParsedTurn("unknown", "", None, None, ok=False, error=failure, action_known=False)
                    info[i]["backend_error"] = True
                else:
                    c = comps[k]
                    info[i]["tokens_in"] += c.tokens_in
                    info[i]["tokens_out"] += c.tokens_out
                    c_text, c_struct = c.text, c.structured
                    parsed = parse_turn(c.text)
                    if c.truncated and parsed.ok:
                        parsed = ParsedTurn(parsed.action, parsed.utterance, None, parsed.reasoning, ok=False,
                                            error="reply cut off at the token limit",
                                            action_known=parsed.action_known, raw_action=parsed.raw_action)
                info[i]["raw"] = c_text
                info[i]["structured"] = c_struct and parsed.ok
                info[i]["retries"] = attempt
                results[i] = (parsed, info[i])
                if not parsed.ok and not info[i]["backend_error"] and attempt < self.spec.max_retries:
                    still.append(i)
                    reqs[i].messages = reqs[i].messages + [
                        {"role": "assistant", "content": c_text or "(no reply)"},
                        {"role": "user", "content": f"That reply was not usable ({parsed.error}). Answer again with "
                                                    "one JSON object with the keys action, utterance and price."},
                    ]
            pending = still
            attempt += 1
        return results  # type: ignore[return-value]
