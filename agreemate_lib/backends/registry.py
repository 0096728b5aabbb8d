"""The backend registry: roster name -> the class that implements it, imported only when used.

Adding a backend is one file in this folder (a :class:`~agreemate_lib.backends.base.ChatBackend` subclass with its
``name``, ``Config`` and ``from_spec``) plus one line below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from agreemate_lib.backends.base import ChatBackend

if TYPE_CHECKING:
    from agreemate_lib.negotiation.agents import AgentSpec

BACKENDS: dict[str, str] = {
    "transformers": "agreemate_lib.backends.transformers_backend:TransformersBackend",
    "openai": "agreemate_lib.backends.openai_http:OpenAIBackend",
    "llama-cpp": "agreemate_lib.backends.llama_cpp_backend:LlamaCppBackend",
    "llama-server": "agreemate_lib.backends.llama_server:LlamaServerBackend",
    "rule-based": "agreemate_lib.backends.rule_based:RuleBasedBackend",
}


class UnknownBackend(ValueError):
    pass


def backend_names() -> tuple[str, ...]:
    return tuple(BACKENDS)


def backend_class(name: str) -> type[ChatBackend]:
    """The class registered as ``name`` (its module is imported now; heavy libraries load when it is built)."""
    if name not in BACKENDS:
        raise UnknownBackend(f"unknown backend {name!r}: registered backends are {', '.join(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if cls.name != name:
        raise TypeError(f"{BACKENDS[name]} declares name {cls.name!r}, registered as {name!r}")
    return cls


def make_backend(spec: AgentSpec, **runtime) -> ChatBackend:
    """The backend a roster agent asks for, built from its spec (``runtime``: secrets such as ``api_key``)."""
    return backend_class(spec.backend).from_spec(spec, **runtime)
