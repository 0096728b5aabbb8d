"""Chat backends: one interface (:class:`~agreemate_lib.backends.base.ChatBackend`), one module per backend."""

from agreemate_lib.backends.base import (
    BackendError,
    ChatBackend,
    ChatRequest,
    Completion,
    GenerationSettings,
    ReplyFormat,
)

__all__ = ["BackendError", "ChatBackend", "ChatRequest", "Completion", "GenerationSettings", "ReplyFormat"]
