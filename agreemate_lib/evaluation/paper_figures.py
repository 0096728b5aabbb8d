"""The paper's figures redrawn from its published runs, with our study beside them where it has the same grouping.

Every figure is drawn by a function of :mod:`agreemate_lib.evaluation.figures`, the same one that draws our study:
the paper's rows and ours differ only in their ``source`` column. Each negotiation gets its agents' traits (variant,
chain-of-thought, personality, size), from the published file names or from our roster, and the groupings of the
paper's figures are computed from them:

- ``cot_group``: no CoT / buyer CoT / seller CoT / both CoT, among base agents without a personality (the paper: 3B);
- ``personality_pair``: buyer personality / seller personality, among base agents without CoT (the paper: 3B);
- ``variant_group``: base / fine-tuned / generalist, both sides the same variant (the paper: 3B).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from agreemate_lib.evaluation import figures as F

PAPER = "paper (published Llama runs)"
OURS = "ours (this study)"

#: The metrics of the paper's size x CoT figures, and of its personality figures.
SIZE_COT_METRICS = ("agreement_rate", "bias", "fairness", "aggressiveness", "dialogue_length")
PERSONALITY_METRICS = ("agreement_rate", "bias", "fairness")
FINETUNE_FIGURE_METRICS = ("agreement_rate", "bias", "fairness", "aggressiveness", "dialogue_length")
COT_ORDER = ["no CoT", "buyer CoT", "seller CoT", "both CoT"]
PERSONALITIES = ["neutral", "aggressive", "fair", "passive"]
VARIANT_ORDER = ["base", "fine-tuned", "generalist"]
SIZE_ORDER = ["1B", "3B", "8B", "70B", "CoT-3B", "CoT-8B", "CoT-70B"]


@dataclass(frozen=True)
class AgentTraits:
    variant: str  # base | fine-tuned | generalist | preference | rule-based
    cot: bool
    personality: str  # neutral | aggressive | fair | passive
    size: str  # the paper: 3B / 8B / 70B; ours: the model name

    @property
    def label(self) -> str:
        """The short label of the paper's size x CoT figures: ``3B``, ``CoT-70B``."""
        return ("CoT-" if self.cot else "") + self.size


_PUBLISHED = re.compile(r"^published-(baseline|finetune|generalist)(-cot)?-(\d+b)(?:-(aggressive|fair|passive))?$")
_VARIANT = {"baseline": "base", "finetune": "fine-tuned", "generalist": "generalist"}


def published_traits(agent_id: str) -> AgentTraits:
    """Traits of a published agent id (:func:`~agreemate_lib.evaluation.paper.pair_from_filename`)."""
    m = _PUBLISHED.match(agent_id)
    if not m:
        raise ValueError(f"not a published agent id: {agent_id!r} (expected e.g. published-baseline-cot-8b-fair)")
    variant, cot, size, personality = m.groups()
    return AgentTraits(_VARIANT[variant], bool(cot), personality or "neutral", size.upper())


def roster_traits(roster: dict) -> dict[str, AgentTraits]:
    """Traits of our roster's agents (``AgentSpec`` by id): an adapter trained for one role is ``fine-tuned``, the
    generalist adapter ``generalist``, a role adapter after the preference step (folder ``<role>-dpo``)
    ``preference`` (not one of the paper's variants: left out of the variant figures rather than pooled with the
    supervised adapters), the rule-based backend ``rule-based``, anything else ``base``."""
    out = {}
    for agent_id, spec in roster.items():
        if spec.backend == "rule-based":
            variant = "rule-based"
        elif spec.adapter:
            name = Path(spec.adapter).name
            variant = "generalist" if name == "generalist" else "preference" if name.endswith("-dpo") else "fine-tuned"
        else:
            variant = "base"
        out[agent_id] = AgentTraits(variant, bool(spec.cot), spec.personality or "neutral", spec.model)
    return out


def with_groups(table: pd.DataFrame, traits: dict[str, AgentTraits], source: str,
                paper_size: str | None = None) -> pd.DataFrame:
    """``table`` (per negotiation or per turn) with the buyer's and seller's traits and the figures' groupings; rows
    whose agents have no traits (the human dialogues) keep NaN groups. ``paper_size``: only pairs of that size enter
    the CoT, personality and variant groupings (the paper ran those at 3B)."""
    t = table.copy()
    t["source"] = source
    for side in ("buyer", "seller"):
        tr = t[f"{side}_id"].map(lambda a: asdict(traits[a]) if a in traits else {})
        for k in ("variant", "cot", "personality", "size"):
            t[f"{side}_{k}"] = tr.map(lambda d, k=k: d.get(k))
        t[f"{side}_label"] = t[f"{side}_id"].map(lambda a: traits[a].label if a in traits else a)
    base = (t["buyer_variant"] == "base") & (t["seller_variant"] == "base")
    if paper_size:
        sized = (t["buyer_size"] == paper_size) & (t["seller_size"] == paper_size)
    else:
        sized = pd.Series(True, index=t.index)
    neutral = (t["buyer_personality"] == "neutral") & (t["seller_personality"] == "neutral")
    no_cot = (t["buyer_cot"] == False) & (t["seller_cot"] == False)  # noqa: E712 (NaN for agents without traits)
    cot = t["buyer_cot"].fillna(False).astype(bool).map({True: "buyer", False: ""}) + \
        t["seller_cot"].fillna(False).astype(bool).map({True: "seller", False: ""})
    t["cot_group"] = cot.map({"": "no CoT", "buyer": "buyer CoT", "seller": "seller CoT",
                              "buyerseller": "both CoT"}).where(base & sized & neutral)
    t["personality_pair"] = (t["buyer_personality"] + " / " + t["seller_personality"]).where(base & sized & no_cot)
    same = t["buyer_variant"] == t["seller_variant"]
    variant_ok = same & t["buyer_variant"].isin(VARIANT_ORDER) & sized & neutral
    # the base row of the comparison is the plain base pair (no CoT); fine-tuned agents keep their own CoT setting
    variant_ok &= ~((t["buyer_variant"] == "base") & ~no_cot.astype(bool))
    t["variant_group"] = t["buyer_variant"].where(variant_ok)
    return t


def published_frames(directory: str | Path, files: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-negotiation table, per-turn table) of the published runs (corrected formulas), with traits and groups.
    ``files``: names inside ``directory`` (default: every non-``_updated`` CSV)."""
    from agreemate_lib.core.records import negotiations_to_frame
    from agreemate_lib.evaluation.paper import pair_from_filename, published_negotiations, read_published_csv
    from agreemate_lib.evaluation.tables import published_table

    d = Path(directory)
    names = files or sorted(p.name for p in d.glob("*.csv") if not p.stem.endswith("_updated"))
    tables, turns, traits = [], [], {}
    for name in names:
        rows = read_published_csv(d / name)  # read once: the table and the turns come from the same rows
        tables.append(published_table(d / name, "corrected", rows))
        turns.append(negotiations_to_frame(published_negotiations(d / name, rows)))
        for a in pair_from_filename(name):
            traits[a] = published_traits(a)
    table = pd.concat(tables, ignore_index=True)
    turn = pd.concat(turns, ignore_index=True)
    return with_groups(table, traits, PAPER, "3B"), with_groups(turn, traits, PAPER, "3B")


def human_reference(human_table: pd.DataFrame, metrics) -> dict[str, float]:
    """The human dialogues' mean of each metric (a reference line in the figures)."""
    from agreemate_lib.evaluation.tables import scored

    t = scored(human_table)
    return {m: float(t[m].mean()) for m in metrics if m in t and t[m].notna().any()}


def _speaker_column(turns: pd.DataFrame, trait: str) -> pd.Series:
    return turns[f"buyer_{trait}"].where(turns["speaker"] == "buyer", turns[f"seller_{trait}"])


def _short(source: str) -> str:
    return "paper" if source == PAPER else "ours"


@dataclass
class FigureData:
    """The frames of one figure: negotiations and turns of both sources (ours may be empty)."""

    table: pd.DataFrame
    turns: pd.DataFrame
    reference: dict[str, float]
    paper_all: pd.DataFrame  # every published negotiation (the paper-only figures: all of its listings)


#: The paper's figures by name: (title, the grouping it needs in our study to show ours beside it (None: paper only)).
PAPER_FIGURES = {
    "paper_size_cot": ("Size x chain-of-thought: buyer x seller heatmaps of the paper's 36 pairs", None),
    "paper_cot": ("Chain-of-thought: no CoT / buyer / seller / both (3B), ours beside", "cot_group"),
    "paper_personality_outcomes": ("Personalities: agreement, bias, fairness per personality pair", "personality_pair"),
    "paper_personality_actions": ("Personalities: dialogue acts per personality and role", "personality_pair"),
    "paper_personality_prices": ("Personalities: price progression over turns", "personality_pair"),
    "paper_personality_lengths": ("Personalities: dialogue lengths", "personality_pair"),
    "paper_finetuning": ("Fine-tuning: base vs fine-tuned vs generalist (3B), ours beside", "variant_group"),
}


def paper_figure(name: str, data: FigureData):
    """The Altair chart of one paper figure (:data:`PAPER_FIGURES`) over ``data`` (both sources)."""
    t, turns, ref = data.table, data.turns, data.reference
    if name == "paper_size_cot":
        t = data.paper_all
        p = t[(t["source"] == PAPER) & (t["buyer_variant"] == "base") & (t["seller_variant"] == "base")
              & (t["buyer_personality"] == "neutral") & (t["seller_personality"] == "neutral")].copy()
        p["buyer_id"], p["seller_id"] = p["buyer_label"], p["seller_label"]
        alt = F._alt()
        rows = [F.pair_heatmap(p, m, order=SIZE_ORDER) for m in SIZE_COT_METRICS]
        return alt.vconcat(alt.hconcat(*rows[:2]).resolve_scale(color="independent"),
                           alt.hconcat(*rows[2:4]).resolve_scale(color="independent"), rows[4]
                           ).resolve_scale(color="independent").properties(
            title="the paper's size x CoT grid (published runs, corrected formulas; mean and 95% CI per cell)")
    if name == "paper_cot":
        return F.group_metrics(t.dropna(subset=["cot_group"]), "cot_group", SIZE_COT_METRICS, ref, COT_ORDER,
                               "chain-of-thought (mean, 95% CI; dashed: human dialogues)")
    if name == "paper_personality_outcomes":
        return F.group_metrics(t.dropna(subset=["personality_pair"]), "personality_pair", PERSONALITY_METRICS, ref,
                               title="personality pairs, buyer / seller (mean, 95% CI; dashed: human dialogues)")
    if name == "paper_finetuning":
        return F.group_metrics(t.dropna(subset=["variant_group"]), "variant_group", FINETUNE_FIGURE_METRICS, ref,
                               VARIANT_ORDER, "fine-tuning (mean, 95% CI; dashed: human dialogues)")
    u = turns.dropna(subset=["personality_pair"]).copy()
    if name == "paper_personality_actions":
        u["personality"] = u["source"].map(_short) + ": " + _speaker_column(u, "personality")
        return F.action_distribution(u, by="personality")
    if name == "paper_personality_prices":
        u["group"] = u["source"].map(_short) + ": " + u["personality_pair"]
        return F.price_progression(u, by="group")
    if name == "paper_personality_lengths":
        n = t.dropna(subset=["personality_pair"]).copy()
        n["group"] = n["source"].map(_short) + ": " + n["personality_pair"]
        return F.length_distribution(n, by="group")
    raise KeyError(f"unknown paper figure {name!r}; known: {', '.join(PAPER_FIGURES)}")


def figure_data(published_dir: str | Path, ours_table: pd.DataFrame, ours_turns: pd.DataFrame,
                traits: dict[str, AgentTraits], human_table: pd.DataFrame | None = None,
                same_listings: bool = True) -> FigureData:
    """Both sources in one frame. With ``same_listings`` and a study on the paper's listings, the paper's rows are
    kept to the scenarios our study negotiated (all 30 when it ran them all)."""
    pt, pturns = published_frames(published_dir)
    frames_t, frames_u = [pt], [pturns]
    if len(ours_table):
        ot = with_groups(ours_table, traits, OURS)
        frames_t.append(ot)
        if len(ours_turns):
            frames_u.append(with_groups(ours_turns, traits, OURS))
        shared = set(ot["scenario_id"]) & set(pt["scenario_id"])
        if same_listings and shared:
            frames_t[0] = pt[pt["scenario_id"].isin(shared)]
            frames_u[0] = pturns[pturns["scenario_id"].isin(shared)]
    ref = human_reference(human_table, set(SIZE_COT_METRICS) | set(PERSONALITY_METRICS)) \
        if human_table is not None and len(human_table) else {}
    return FigureData(pd.concat(frames_t, ignore_index=True), pd.concat(frames_u, ignore_index=True), ref, pt)


def figure_sources(name: str, data: FigureData) -> dict[str, int]:
    """How many negotiations of each source a figure shows (the figure's metadata)."""
    return {str(k): int(v) for k, v in _shown(name, data)["source"].value_counts().items()}


def figure_listings(name: str, data: FigureData) -> int:
    """How many of the paper's listings a figure shows (its scenarios, or those our study shares with it)."""
    t = _shown(name, data)
    return int(t.loc[t["source"] == PAPER, "scenario_id"].nunique())


def _shown(name: str, data: FigureData) -> pd.DataFrame:
    group = PAPER_FIGURES[name][1]
    t = data.paper_all if group is None else data.table
    if group is None:  # the size x CoT grid: the paper's base agents without a personality
        t = t[(t["source"] == PAPER) & (t["buyer_variant"] == "base") & (t["seller_variant"] == "base")
              & (t["buyer_personality"] == "neutral") & (t["seller_personality"] == "neutral")]
    else:
        t = t.dropna(subset=[group])
    return t
