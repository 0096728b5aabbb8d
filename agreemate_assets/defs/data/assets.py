"""Data assets: the Craigslist Bargains source and the seeded scenario sample."""

import hashlib
import json
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, DataVersion, MetadataValue, Output, asset, observable_source_asset

from agreemate_lib.core import settings as lib_settings
from agreemate_lib.core.io import frame_version
from agreemate_lib.core.scenarios import study_scenarios

from ...lib.metadata import md_table
from ...lib.resources import StudySettings
from ...lib.versions import source_version

#: Derived from the source that defines these assets (see agreemate_assets/lib/versions.py).
CODE_VERSION = source_version(__name__, "agreemate_lib.core")


@observable_source_asset(group_name="data", description="Craigslist Bargains (He et al. 2018), HF JSON lines.")
def craigslist_raw() -> DataVersion:
    src = lib_settings.craigslist_source()
    p = Path(src)
    if not p.is_dir():
        return DataVersion(f"hub:{src}")
    h = hashlib.sha256()
    for f in sorted(p.glob("*")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return DataVersion(h.hexdigest()[:16])


@asset(group_name="data", deps=[craigslist_raw], code_version=CODE_VERSION, kinds={"pandas", "parquet"},
       description="The seeded scenario sample every model pair negotiates over, with the study's run settings.")
def scenarios(context: AssetExecutionContext, study: StudySettings) -> Output[pd.DataFrame]:
    sset = study_scenarios(study.split, study.n_scenarios, study.seed, source=study.source())
    df = pd.DataFrame([s.to_dict() for s in sset.scenarios])
    run_settings = {"max_turns": study.max_turns, "replicates": study.replicates, "buyer_opens": study.buyer_opens,
                    "seed": study.seed}
    df["run_settings"] = json.dumps(run_settings, sort_keys=True)
    version = frame_version(df)  # the content: ids, listings, targets and run settings
    for d in sset.dropped[:20]:
        context.log.warning(f"dropped {d}")
    extra = {}
    if study.split == "paper":
        from agreemate_lib.evaluation.paper import paper_listing_report

        extra["paper_listings_vs_train_scenarios"] = MetadataValue.json(paper_listing_report(study.source()))
    return Output(df, data_version=DataVersion(version), metadata={
        **extra,
        "split": study.split,
        "content_version": version,
        "count": len(df),
        "categories": MetadataValue.json(df["category"].value_counts().to_dict()),
        "price_range": f"${df['listing_price'].min():,.2f} .. ${df['listing_price'].max():,.2f}",
        "dropped_rows": len(sset.dropped),
        "dropped_examples": MetadataValue.json([str(d) for d in sset.dropped[:5]]),
        "source": sset.source,
        "preview": MetadataValue.md(md_table(df[["scenario_id", "title", "category", "listing_price", "buyer_target",
                                                 "seller_target"]].head(10))),
    })
