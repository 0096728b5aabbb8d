"""The rule-based agent as a backend: the concession policy of :mod:`agreemate_lib.negotiation.policies` answers
from the typed turn state in each request (the messages are not read), in the same JSON as the LLM agents."""

from __future__ import annotations

import json

from pydantic import Field

from agreemate_lib.backends.base import BackendConfig, ChatBackend, ChatRequest, Completion, GenerationSettings
from agreemate_lib.negotiation.policies import ConcessionPolicy


class RuleBasedConfig(BackendConfig):
    beta: float = Field(0.5, gt=0, description="concession shape: < 1 concedes late (Boulware), > 1 early")


class RuleBasedBackend(ChatBackend):
    name = "rule-based"
    Config = RuleBasedConfig
    needs_model = False

    @classmethod
    def from_spec(cls, spec, **_) -> RuleBasedBackend:
        return cls(beta=spec.backend_config().beta)

    def __init__(self, beta: float = 0.5, opening_margin: float = 0.1):
        self.policy = ConcessionPolicy(beta, opening_margin)
        self.model_id = f"rule-based(beta={beta},margin={opening_margin})"

    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        out = []
        for req in requests:
            if req.context is None:
                out.append(Completion("", error="the rule-based policy needs the turn state (request.context)"))
                continue
            out.append(Completion(json.dumps(self.policy.decide(req.context)), structured=True))
        return out
