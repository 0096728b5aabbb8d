"""Estimate the work of a batch of negotiations before running it (``agreemate negotiate --dry-run``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agreemate_lib.backends.registry import backend_class
from agreemate_lib.backends.structured import max_reply_tokens
from agreemate_lib.core.scenarios import Scenario
from agreemate_lib.negotiation.agents import AgentSpec
from agreemate_lib.negotiation.prompts import system_prompt
from agreemate_lib.negotiation.runner import RunConfig

TOKENS_PER_TURN_IN_HISTORY = 40  # a turn as it reappears in later prompts (JSON or words), measured on SmolLM2 runs


def chars_to_tokens(text: str) -> int:
    """About 4 characters per token for English BPE vocabularies (Llama, SmolLM2)."""
    return max(1, len(text) // 4)


def estimate_workload(scenarios: Sequence[Scenario], buyer: AgentSpec, seller: AgentSpec, cfg: RunConfig,
                      count_tokens: Callable[[str], int] = chars_to_tokens) -> dict[str, int]:
    """Upper bounds for one pair: every negotiation runs to the turn limit and every reply to its length bound."""
    n = len(scenarios) * cfg.replicates
    out = {"negotiations": n, "generations_max": 0, "prompt_tokens_max": 0, "generated_tokens_max": 0,
           "llm_generations_max": 0}
    for sc in scenarios:
        sys_tokens = {role: count_tokens(system_prompt(role, sc.view_for(role), spec.personality, spec.cot,
                                                       cfg.max_turns))
                      for role, spec in (("buyer", buyer), ("seller", seller))}
        for t in range(cfg.max_turns):
            role = ("buyer" if cfg.buyer_opens else "seller") if t % 2 == 0 else (
                "seller" if cfg.buyer_opens else "buyer")
            spec = buyer if role == "buyer" else seller
            out["generations_max"] += cfg.replicates
            if not backend_class(spec.backend).needs_model:  # a policy, no language model: no tokens
                continue
            out["llm_generations_max"] += cfg.replicates
            out["prompt_tokens_max"] += cfg.replicates * (sys_tokens[role] + TOKENS_PER_TURN_IN_HISTORY * (t + 1))
            out["generated_tokens_max"] += cfg.replicates * max_reply_tokens(
                spec.cot, spec.max_utterance_tokens, spec.max_reasoning_tokens)
    return out
