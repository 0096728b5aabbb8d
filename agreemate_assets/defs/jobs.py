"""Jobs over asset selections: the main study is these jobs in order (see agreemate_assets/study.py)."""

from dagster import AssetSelection, define_asset_job

from .negotiation.partitions import buyer_agents_partitions, pair_partitions, seller_agents_partitions

EVALUATION_ASSETS = ("human_baseline", "published_runs", "published_run_transcripts", "table3", "group_tables")

#: The roster and the scenario sample (with their checks).
study_setup = define_asset_job(
    "study_setup", AssetSelection.assets("agent_roster", "scenarios").materializable().without_checks()
    | AssetSelection.checks_for_assets("scenarios"),
    description="Register the roster's agents as partitions and draw the scenario sample.")

#: One agent's config, as a buyer and as a seller (one partition each).
buyer_config_job = define_asset_job("buyer_config", AssetSelection.assets("buyer_agent_config"),
                                    partitions_def=buyer_agents_partitions)
seller_config_job = define_asset_job("seller_config", AssetSelection.assets("seller_agent_config"),
                                     partitions_def=seller_agents_partitions)

#: One model pair: its transcripts (with the blocking check) and its metrics.
study_pair = define_asset_job(
    "study_pair", AssetSelection.assets("negotiation_transcripts", "negotiation_metrics"),
    partitions_def=pair_partitions,
    description="Negotiate one buyer x seller pair over the scenarios and score it.")

#: The metrics table over every stored pair.
study_metrics = define_asset_job("study_metrics", AssetSelection.assets("metrics_by_negotiation", "metrics"),
                                 description="Collect every pair's metrics into one table with CIs.")

#: The evaluation tables and every report figure (not the training curves: they need trained adapters).
study_reports = define_asset_job(
    "study_reports",
    (AssetSelection.groups("reports") - AssetSelection.assets("figure_training_curves"))
    | AssetSelection.assets(*EVALUATION_ASSETS),
    description="The paper's runs, the human baseline, Table 3, group tables, the figures and the report.")
