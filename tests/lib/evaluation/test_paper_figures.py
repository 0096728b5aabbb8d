"""The paper's figures from its published runs: agent traits, the figures' groupings, ours beside theirs."""

import json

import pandas as pd
import pytest

from agreemate_lib.evaluation import paper_figures as PF
from agreemate_lib.evaluation.tables import published_table
from agreemate_lib.negotiation.roster import load_roster
from tests.conftest import PUBLISHED


def test_published_traits():
    t = PF.published_traits("published-baseline-cot-70b")
    assert (t.variant, t.cot, t.personality, t.size, t.label) == ("base", True, "neutral", "70B", "CoT-70B")
    t = PF.published_traits("published-baseline-3b-aggressive")
    assert (t.cot, t.personality) == (False, "aggressive")
    assert PF.published_traits("published-finetune-3b").variant == "fine-tuned"
    assert PF.published_traits("published-generalist-3b").variant == "generalist"
    with pytest.raises(ValueError, match="not a published agent id"):
        PF.published_traits("smollm2")


@pytest.fixture(scope="module")
def paper_data():
    if not PUBLISHED.is_dir():
        pytest.fail(f"the published runs are not at {PUBLISHED}")
    return PF.figure_data(PUBLISHED, pd.DataFrame(), pd.DataFrame(), {})


def test_groupings_of_the_published_grid(paper_data):
    t = paper_data.table
    assert t["cot_group"].value_counts().to_dict() == {g: 30 for g in PF.COT_ORDER}
    pairs = t["personality_pair"].value_counts()
    assert len(pairs) == 16 and set(pairs) == {30}
    assert t["variant_group"].value_counts().to_dict() == {"base": 30, "fine-tuned": 30, "generalist": 30}
    # the base 3B pair is in all three groupings; a 70B or a CoT pair in none of the personality ones
    base = t[t["pair"] == "baseline-3B-buyer+baseline-3B-seller"]
    assert set(base["cot_group"]) == {"no CoT"} and set(base["personality_pair"]) == {"neutral / neutral"}
    assert t.loc[t["pair"].str.contains("70B|COT"), "personality_pair"].isna().all()
    assert PF.figure_listings("paper_size_cot", paper_data) == 30
    assert PF.figure_sources("paper_size_cot", paper_data) == {PF.PAPER: 38 * 30}


def test_ours_beside_theirs_on_the_same_listings(paper_data):
    """Our roster's agents fall into the paper's groupings by their traits (CoT, personality, adapter); the paper's
    rows are kept to the listings our study negotiated; each figure's data holds both sources."""
    roster = load_roster("agents.yaml")
    traits = PF.roster_traits(roster)
    assert traits["smollm2-ft-buyer"].variant == "fine-tuned" and traits["smollm2-ft-generalist"].variant == \
        "generalist" and traits["rule-based"].variant == "rule-based" and traits["smollm2-cot"].cot
    traits = PF.roster_traits(load_roster("agents.yaml", include_disabled=True))
    assert traits["smollm2-dpo-buyer"].variant == "preference"  # not pooled with the supervised adapters
    # our agents' ids on 5 of the paper's listings (the metric values are the published base pair's: only the
    # grouping is under test here)
    src = published_table(PUBLISHED / "baseline-3B-buyer+baseline-3B-seller.csv").head(5)
    ours = []
    for b, s in [("smollm2", "smollm2"), ("smollm2-cot", "smollm2"), ("smollm2-aggressive", "smollm2-passive"),
                 ("smollm2-ft-buyer", "smollm2-ft-seller"), ("smollm2-ft-generalist", "smollm2-ft-generalist"),
                 ("rule-based", "smollm2"), ("smollm2-dpo-buyer", "smollm2-dpo-seller")]:
        ours.append(src.assign(buyer_id=b, seller_id=s, pair=f"{b}+{s}"))
    ours = pd.concat(ours, ignore_index=True)
    data = PF.figure_data(PUBLISHED, ours, pd.DataFrame(), traits, ours)
    mine = data.table[data.table["source"] == PF.OURS].groupby("pair").first()
    assert mine.loc["smollm2+smollm2", "cot_group"] == "no CoT"
    assert mine.loc["smollm2-cot+smollm2", "cot_group"] == "buyer CoT"
    assert mine.loc["smollm2-aggressive+smollm2-passive", "personality_pair"] == "aggressive / passive"
    assert mine.loc["smollm2-ft-buyer+smollm2-ft-seller", "variant_group"] == "fine-tuned"
    assert mine.loc["smollm2-ft-generalist+smollm2-ft-generalist", "variant_group"] == "generalist"
    assert mine.loc["smollm2+smollm2", "variant_group"] == "base"
    assert pd.isna(mine.loc["smollm2-dpo-buyer+smollm2-dpo-seller", "variant_group"])
    assert mine.loc["rule-based+smollm2", ["cot_group", "personality_pair", "variant_group"]].isna().all()
    assert PF.figure_listings("paper_cot", data) == 5 and PF.figure_listings("paper_size_cot", data) == 30
    assert PF.figure_sources("paper_finetuning", data) == {PF.PAPER: 15, PF.OURS: 15}
    assert set(data.reference) >= {"agreement_rate", "dialogue_length"}
    spec = PF.paper_figure("paper_finetuning", data).to_dict()
    sources = {r["source"] for r in spec["datasets"][next(iter(spec["datasets"]))]}
    assert sources == {PF.PAPER, PF.OURS}
    assert "reference" in json.dumps(spec)  # the human reference line


def test_every_paper_figure_draws(paper_data, tmp_path):
    from agreemate_lib.evaluation.figures import save_chart

    for name in PF.PAPER_FIGURES:
        paths = save_chart(PF.paper_figure(name, paper_data), tmp_path, name)
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 20_000, name
    with pytest.raises(KeyError, match="unknown paper figure"):
        PF.paper_figure("nope", paper_data)
