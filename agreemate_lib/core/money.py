"""Money, defined once: how a price is written for a person or a model, and what counts as a price in text.

- :func:`format_money` is the one formatter (prompts, training contexts, rule-based replies, UI metadata).
- :func:`price_spans` is the one price grammar: parsing a reply, extracting prices from utterances and tagging
  price tokens for attention probing all read text through it, so they agree on what a price is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal


class PriceError(ValueError):
    """A price that cannot be a price (negative, not finite)."""


def format_money(x: float, cents: Literal["auto", "always"] = "auto") -> str:
    """``$1,200`` / ``$45.99``. ``auto``: whole dollars from $100 up or for whole amounts, cents below;
    ``always``: two decimals (the rule-based agent's style)."""
    if cents == "always":
        return f"${x:,.2f}"
    return f"${x:,.0f}" if x >= 100 or float(x).is_integer() else f"${x:,.2f}"


_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
PRICE_RE = re.compile(
    rf"(?P<neg>-\s*)?(?P<cur>\$|usd\s*|us\$)?\s*(?P<num>{_NUM}|\.\d+)\s*(?P<k>k\b|thousand\b)?\s*(?P<unit>dollars?|bucks|usd)?",
    re.IGNORECASE,
)
# Numbers followed by one of these are quantities, not prices.
NOT_PRICE_AFTER = re.compile(
    r"^\s*(?:%|percent|miles?|mi\b|km|years?|yrs?|months?|weeks?|days?|hours?|minutes?|gb|tb|mb|inch|inches|in\b|"
    r"\"|ft|feet|lbs?|pounds|oz|mm|cm|x\b|sq|bed|bath|br\b|ba\b|people|times|owners?|pieces?|pcs|st\b|nd\b|rd\b|th\b|"
    r"messages?\b)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PriceSpan:
    start: int
    end: int
    value: float
    #: Written with a currency sign, ``k`` or a unit ("dollars"): certainly a price.
    marked: bool


def _match_value(m: re.Match[str]) -> float:
    x = float(m.group("num").replace(",", ""))
    if m.group("k"):
        x *= 1000.0
    return round(x, 2)


def price_spans(text: str) -> list[PriceSpan]:
    """Every price written in ``text``, in order, with its character span.

    Amounts marked with ``$``/``USD``/``dollars``/``k`` always count; bare numbers count unless followed by a unit
    (miles, years, GB, %, messages, ...), part of an identifier ("iPhone 7", "HERO4"), zero, or a model year
    next to the word it qualifies ("2006 Toyota").
    """
    out: list[PriceSpan] = []
    if not text:
        return out
    for m in PRICE_RE.finditer(text):
        marked = bool(m.group("cur") or m.group("k") or m.group("unit"))
        if not marked:
            after = text[m.end("num"):]
            num = m.group("num")
            if NOT_PRICE_AFTER.match(after):
                continue
            if re.fullmatch(r"(19|20)\d\d", num) and re.match(r"\s+[A-Z]", after):
                continue
            if m.start("num") > 0 and text[m.start("num") - 1].isalpha():
                continue
            if float(num.replace(",", "")) == 0:
                continue
        start = m.start("cur") if m.group("cur") else m.start("num")
        end = max(m.end(g) for g in ("num", "k", "unit") if m.group(g))
        out.append(PriceSpan(start, end, _match_value(m), marked))
    return out


def extract_prices(text: str) -> list[float]:
    """Every price mentioned in free text, in order (see :func:`price_spans`)."""
    return [s.value for s in price_spans(text)]


def price_from_utterance(text: str) -> float | None:
    """The price an utterance proposes: the last marked amount if any, else the last plausible number."""
    spans = price_spans(text)
    marked = [s.value for s in spans if s.marked]
    if marked:
        return marked[-1]
    return spans[-1].value if spans else None


_NULL_TEXT = {"null", "none", "n/a", "na", "nan", "-", "no price", "-1", "-1.0"}


def parse_price(value: Any) -> float | None:
    """One price from a JSON value or a string: ``1200``, ``"$1,200"``, ``"1.2k"``, ``"$45.99"``, ``"300 dollars"``.

    Returns None for null-like values ("null", "none", "n/a", "", -1 as the published runs' "no price").
    Raises :class:`PriceError` for a negative or non-finite price.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        x = float(value)
        if x == -1:
            return None
        if not math.isfinite(x):
            raise PriceError(f"price is not finite: {value!r}")
        if x < 0:
            raise PriceError(f"price is negative: {value!r}")
        return x if x > 0 else None
    text = str(value).strip()
    if not text or text.lower() in _NULL_TEXT:
        return None
    m = PRICE_RE.search(text)
    if not m:
        return None
    x = _match_value(m)
    if m.group("neg") and (m.start("neg") == 0 or text[: m.start("neg")].strip() in {"", "$"}):
        raise PriceError(f"price is negative: {value!r}")
    return x
