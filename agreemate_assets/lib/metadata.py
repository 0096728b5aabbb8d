"""Small helpers for metadata a person reads in the UI."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:,.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")[:120]


def md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def transcript_markdown(turns: pd.DataFrame, title: str = "") -> str:
    """One negotiation as markdown: speaker, act, price, words."""
    out = [f"**{title}**", ""] if title else []
    for r in turns.itertuples(index=False):
        price = "" if pd.isna(r.price) else f" **${r.price:,.2f}**"
        flag = "" if r.parse_ok else " ⚠ parse failure"
        out.append(f"- *{r.speaker}* `{r.action}`{price}: {r.utterance}{flag}")
    if len(turns):
        last = turns.iloc[-1]
        ap = last["accepted_price"]
        out.append("")
        out.append(f"Outcome: **{last['outcome']}**" + ("" if pd.isna(ap) else f" at ${ap:,.2f}"))
    return "\n".join(out)
