"""The one backend interface: a batch of chat conversations in, a batch of completions out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from agreemate_lib.negotiation.agents import AgentSpec
    from agreemate_lib.negotiation.state import TurnState


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 96
    seed: int = 0
    repetition_penalty: float = 1.1

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class ReplyFormat:
    """What the reply must look like: the agent's JSON contract."""

    cot: bool = False
    #: Maximum tokens of the free-text fields under structured generation.
    max_utterance_tokens: int = 60
    max_reasoning_tokens: int = 80
    #: Acts the reply may choose (empty: any act of the vocabulary). Set per turn from the negotiation state.
    allowed_acts: tuple[str, ...] = ()
    #: Range of integer digits a price may have (0, 0: any), e.g. (2, 3) for a $200 listing.
    price_digits: tuple[int, int] = (0, 0)


@dataclass
class ChatRequest:
    """One conversation to continue. ``context`` carries the typed turn state (for policies and logs)."""

    messages: list[dict[str, str]]
    reply_format: ReplyFormat = field(default_factory=ReplyFormat)
    context: TurnState | None = None
    #: Distinguishes requests for seeding and caching (negotiation id, turn, attempt).
    key: str = ""
    #: Identifies the conversation (negotiation x role) whose KV cache a local backend may reuse across turns.
    prefix_key: str = ""


@dataclass
class Completion:
    text: str
    tokens_in: int = 0
    tokens_out: int = 0
    #: True when the reply came out of constrained decoding / server-side structured output.
    structured: bool = False
    #: The backend failed to produce a reply (raised, timed out, refused): not a reply of the model's.
    error: str | None = None
    #: The reply hit the token limit before it was complete (the model's reply, but unusable).
    truncated: bool = False


def request_seed(run_seed: int, key: str) -> int:
    """The sampling seed of one request: the run's seed and the request key (negotiation, turn, attempt), so a
    reply never depends on which other requests share its batch (every backend seeds with it)."""
    import hashlib

    return int(hashlib.sha256(f"{run_seed}|{key}".encode()).hexdigest()[:15], 16)


class BackendError(RuntimeError):
    pass


class BackendConfig(BaseModel):
    """A backend's own settings, written flat in a roster entry beside the common agent fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ChatBackend(ABC):
    """Batched chat generation. One file per backend, registered by one line in :mod:`.registry`."""

    #: The registry name (``backend:`` in the roster).
    name: ClassVar[str] = ""
    #: The backend's typed settings; an agent's entry may set any of these fields.
    Config: ClassVar[type[BackendConfig]] = BackendConfig
    #: ``model:`` names weights or a served model (False: the model field is ignored, e.g. a rule-based policy).
    needs_model: ClassVar[bool] = True
    #: Needs a secret (an API key) from the environment at run time.
    needs_credentials: ClassVar[bool] = False
    #: Can run a LoRA adapter on its base model.
    supports_adapter: ClassVar[bool] = False
    #: Loads weights into this process (heavy: one such backend per loaded model is shared by agents).
    loads_weights: ClassVar[bool] = False

    #: A stable identity of the model behind this backend (for caches and provenance).
    model_id: str = ""

    @classmethod
    def from_spec(cls, spec: AgentSpec, **runtime: Any) -> ChatBackend:
        """Build the backend for a roster agent (its common fields and its :attr:`Config`). ``runtime`` carries what
        never enters a config (``api_key``); backends ignore what they do not use."""
        raise NotImplementedError(f"backend {cls.name!r} cannot be built from a roster entry")

    @abstractmethod
    def generate(self, requests: list[ChatRequest], settings: GenerationSettings) -> list[Completion]:
        """One completion per request, in order. Must not raise for a single bad reply: return it with ``error``."""

    def release(self, prefix_keys: list[str]) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Forget per-conversation state (KV caches) of conversations that have ended."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        pass

    def batcher(self):
        """The :class:`~.batching.Batcher` that merges this backend's calls with other pairs' (None: calls run as
        they come). A thread running a pair joins it so the others wait for its calls."""
        return None
