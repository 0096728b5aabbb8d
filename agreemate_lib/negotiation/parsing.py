"""Turning a model's reply into a turn: tolerant JSON parsing and price extraction.

Public entry point: :func:`parse_turn`. Pure functions, no model needed.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from agreemate_lib.core.money import PriceError, extract_prices, parse_price, price_from_utterance  # noqa: F401
from agreemate_lib.core.vocabulary import PRICED_ACTS, normalize_action


@dataclass(frozen=True)
class ParsedTurn:
    action: str
    utterance: str
    price: float | None
    reasoning: str | None
    ok: bool
    error: str | None = None
    #: False when the reply named an action outside the vocabulary (mapped to ``unknown`` and flagged).
    action_known: bool = True
    #: The action string as the model wrote it.
    raw_action: str | None = None
    #: The price was read from the words (a priced act whose price field was empty), not written in a price field.
    price_from_words: bool = False


_FENCE_RE = re.compile(r"```(?:json|JSON|python)?\s*(.*?)```", re.DOTALL)
_LABEL_RE = re.compile(
    r"^\s*[-*#>\s]*\**\s*(?P<key>action|act|dialogue[ _-]?act|intent|utterance|message|response|say|text|price|offer|"
    r"reasoning|thought|thoughts|rationale)\s*\**\s*[:=]\s*\**\s*(?P<val>.*?)\s*$",
    re.IGNORECASE,
)
_KEY_GROUPS = {
    "action": ("action", "act", "dialogue_act", "dialogue-act", "dialogueact", "dialogue act", "intent"),
    "utterance": ("utterance", "message", "response", "say", "text"),
    "price": ("price", "offer", "amount", "offer_price"),
    "reasoning": ("reasoning", "thought", "thoughts", "rationale"),
}


def _balanced_objects(text: str) -> list[str]:
    """Every top-level ``{...}`` substring, honouring quotes."""
    objs: list[str] = []
    depth = 0
    start = -1
    quote: str | None = None
    esc = False
    for i, ch in enumerate(text):
        if quote:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'" and depth > 0:
            # an apostrophe inside a word (it's) is not a quote
            if ch == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < len(text) and text[i + 1].isalnum():
                continue
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                objs.append(text[start : i + 1])
    if depth > 0 and start >= 0:  # truncated object: closed here so its fields can be read (and reported)
        tail = text[start:]
        if quote:
            tail += quote
        objs.append(tail + "}" * depth + TRUNCATED_MARK)
    return objs


#: Appended to a candidate object that :func:`_balanced_objects` had to close itself.
TRUNCATED_MARK = "\x00truncated"


def _load_object(s: str) -> dict[str, Any] | None:
    s2 = re.sub(r",\s*}", "}", s)
    for attempt in (s2, s2.replace("\n", " ")):
        try:
            obj = json.loads(attempt)
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        try:
            fixed = re.sub(r"\bnull\b", "None", re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", attempt)))
            obj = ast.literal_eval(fixed)
            if isinstance(obj, dict):
                return obj
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
    return None


def _pick(obj: dict[str, Any], group: str) -> tuple[bool, Any]:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for key in _KEY_GROUPS[group]:
        if key in lowered:
            return True, lowered[key]
    return False, None


def _labelled_fields(text: str) -> dict[str, Any]:
    """``Action: offer`` / ``**Price:** $20`` style lines."""
    found: dict[str, Any] = {}
    for line in text.splitlines():
        m = _LABEL_RE.match(line)
        if not m:
            continue
        key = m.group("key").lower().replace(" ", "_").replace("-", "_")
        val = m.group("val").strip().strip("*").strip()
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        for group, keys in _KEY_GROUPS.items():
            if key in keys or key.replace("_", " ") in keys:
                found.setdefault(group, val)
    return found


def parse_turn(raw_text: str) -> ParsedTurn:
    """Parse a model reply into (action, utterance, price, reasoning).

    Accepts JSON (possibly in code fences, with single quotes, trailing commas or trailing text), or ``Action: ...
    / Utterance: ... / Price: ...`` lines. A price is taken from the ``price`` field, else from the utterance (with or
    without ``$``). Never raises: failures come back with ``ok=False`` and ``error`` set. Unusable replies are
    failures with no price: a JSON object cut off before it closes, an action outside the vocabulary, a priced act
    without a price, an empty utterance.
    """
    if raw_text is None or not str(raw_text).strip():
        return ParsedTurn("unknown", "", None, None, ok=False, error="empty reply", action_known=False)
    text = str(raw_text)
    fields: dict[str, Any] = {}
    candidates: list[str] = []
    for fence in _FENCE_RE.findall(text):
        candidates.extend(_balanced_objects(fence))
    candidates.extend(_balanced_objects(text))
    truncated = False
    for cand in candidates:
        cut = cand.endswith(TRUNCATED_MARK)
        obj = _load_object(cand.removesuffix(TRUNCATED_MARK))
        if obj is None:
            continue
        truncated = cut
        has_action, action = _pick(obj, "action")
        if not has_action:
            continue
        fields["action"] = action
        for group in ("utterance", "price", "reasoning"):
            present, val = _pick(obj, group)
            if present:
                fields[group] = val
        break
    if "action" not in fields:
        fields = _labelled_fields(text) | fields
    if "action" not in fields:
        return ParsedTurn(
            "unknown", text.strip()[:2000], None, None, ok=False, error="no action found in reply", action_known=False
        )

    raw_action = fields.get("action")
    action, known = normalize_action(None if raw_action is None else str(raw_action))
    utterance = fields.get("utterance")
    utterance = "" if utterance is None else str(utterance).strip()
    reasoning = fields.get("reasoning")
    reasoning = None if reasoning is None else str(reasoning).strip() or None

    error = None
    price: float | None = None
    try:
        price = parse_price(fields.get("price"))
    except PriceError as exc:
        error = str(exc)
    from_words = False
    if price is None and error is None and action in PRICED_ACTS:
        price, from_words = price_from_utterance(utterance), True
    ok = error is None
    if truncated:  # "... Would you take 2" is not an offer of $2: a cut-off reply is unusable
        ok, error, price = False, "reply cut off before its JSON object closed", None
    if ok and not known:  # an invented act ("haggle") is unusable: no price the other side could accept
        ok, error, price = False, f"action {raw_action!r} is not in the vocabulary", None
    if ok and action in PRICED_ACTS and price is None:
        ok, error = False, f"action {action!r} needs a price but none was given"
    if ok and not utterance and action not in ("accept", "reject", "quit"):
        ok, error = False, "empty utterance"
    return ParsedTurn(
        action=action,
        utterance=utterance,
        price=price,
        reasoning=reasoning,
        ok=ok,
        error=error,
        action_known=known,
        raw_action=None if raw_action is None else str(raw_action),
        price_from_words=from_words and price is not None,  # a failed reply keeps no price
    )
