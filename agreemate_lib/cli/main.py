"""The ``agreemate`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from agreemate_lib.evaluation.metrics import metric_names


def _cmd_negotiate(args: argparse.Namespace) -> int:
    from agreemate_lib.core.io import atomic_write_parquet
    from agreemate_lib.core.records import negotiations_to_frame, summaries_to_frame
    from agreemate_lib.core.scenarios import study_scenarios
    from agreemate_lib.evaluation.tables import negotiation_table, summarize
    from agreemate_lib.negotiation.agents import Agent
    from agreemate_lib.negotiation.roster import resolve_agent
    from agreemate_lib.negotiation.runner import RunConfig, run_negotiations

    out = Path(args.out)
    sset = study_scenarios(args.split, args.scenarios, args.seed, source=args.data)
    if sset.dropped:
        print(f"dropped {len(sset.dropped)} invalid rows of {args.split} (first: {sset.dropped[0]})", file=sys.stderr)
    buyer_spec, seller_spec = resolve_agent(args.buyer, args.roster), resolve_agent(args.seller, args.roster)
    cfg = RunConfig(max_turns=args.max_turns, buyer_opens=not args.seller_opens, seed=args.seed,
                    replicates=args.replicates, mode=args.mode)
    if args.dry_run:
        from agreemate_lib.negotiation.estimates import estimate_workload

        print(json.dumps(estimate_workload(sset.scenarios, buyer_spec, seller_spec, cfg)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    buyer = Agent(buyer_spec)
    seller = Agent(seller_spec) if seller_spec != buyer_spec else Agent(seller_spec, buyer.backend)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    negs = run_negotiations(sset.scenarios, buyer, seller, cfg, progress=not args.quiet,
                            checkpoint=out / "checkpoint.jsonl")
    run_s = time.perf_counter() - t1
    atomic_write_parquet(negotiations_to_frame(negs), out / "transcripts.parquet")
    atomic_write_parquet(summaries_to_frame(negs), out / "negotiations.parquet")
    table = negotiation_table(negs)
    atomic_write_parquet(table, out / "metrics.parquet")
    (out / "checkpoint.jsonl").unlink(missing_ok=True)
    turns = [t for n in negs for t in n.turns]
    ok = sum(t.parse_ok for t in turns)
    summary = summarize(table, "pair").iloc[0].to_dict()
    print(f"\n{len(negs)} negotiations, {len(turns)} turns in {run_s:.1f} s (model load {load_s:.1f} s)")
    print(f"parse success {ok}/{len(turns)} = {ok / max(1, len(turns)):.1%}; structured without fallback "
          f"{sum(t.structured for t in turns)}/{len(turns)}")
    print(f"outcomes: { {o: sum(n.outcome == o for n in negs) for o in sorted({n.outcome for n in negs})} }")
    for m in metric_names():
        print(f"  {m:22s} {summary[m]: .4f}  [{summary[m + '_ci_low']: .4f}, {summary[m + '_ci_high']: .4f}]")
    print(f"wrote {out / 'transcripts.parquet'}, {out / 'negotiations.parquet'}, {out / 'metrics.parquet'}")
    errors = [n for n in negs if n.outcome == "error"]
    if errors:  # written and kept out of the metrics above; still a failed run
        print(f"\nFAILED: {len(errors)} of {len(negs)} negotiations ended in an error (no reply from a backend); "
              f"they are left out of the metrics (error_rate {summary['error_rate']:.1%}). First: {errors[0].error}",
              file=sys.stderr)
        return 1
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from agreemate_lib.evaluation.paper import PublishedRunError
    from agreemate_lib.evaluation.tables import load_table, summarize, summarize_pairs_then_groups, to_json_records

    try:
        table = load_table(args.paths, args.formula)
    except (ValueError, FileNotFoundError, PublishedRunError) as exc:
        print(f"agreemate metrics: {exc}", file=sys.stderr)
        return 2
    if table.empty:
        print("no negotiations found", file=sys.stderr)
        return 1
    if args.group_by == "cot":
        summary = summarize_pairs_then_groups(table, "cot", n_boot=args.n_boot)
        col = "cot"
    else:
        from agreemate_lib.evaluation.human import human_act_distribution

        summary = summarize(table, "pair", n_boot=args.n_boot, act_reference=human_act_distribution())
        col = "pair"
    paired = None
    if args.paired_against:
        pairs = sorted(set(table["pair"]))
        if args.paired_against not in pairs:
            print(f"agreemate metrics: --paired-against {args.paired_against!r} is none of the pairs read: "
                  f"{', '.join(pairs)}", file=sys.stderr)
            return 2
        from agreemate_lib.evaluation.comparisons import paired_against

        paired = paired_against(table, args.paired_against, metric_names())
    if args.json:
        records = to_json_records(summary, col)
        print(json.dumps(records if paired is None else
                         {"pairs": records, "paired": paired.astype(object).where(paired.notna(), None)
                          .to_dict("records")}))
    else:
        import pandas as pd

        with pd.option_context("display.max_columns", None, "display.width", 200):
            print(summary[[col, "n", *[c for c in ("error_rate",) if c in summary], *metric_names()]]
                  .to_string(index=False))
            if paired is not None:
                print(f"\npaired per scenario, each pair minus {args.paired_against} (sign-flip permutation test, "
                      "bootstrap 95% CI of the mean difference):")
                print(paired[["pair_a", "metric", "n_matched", "mean_difference", "ci_low", "ci_high", "p_value"]]
                      .to_string(index=False))
        print(f"formula: {', '.join(sorted(set(table['formula'])))}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from agreemate_lib.core.settings import data_dir, get_settings
    from agreemate_lib.evaluation.report import build_report, load_study, report_extras

    published = args.published
    if published is None and data_dir() is not None:
        published = str(data_dir() / "agreemate_published_runs")
    results = args.results or get_settings().results
    table, turns = load_study(results)
    path = build_report(args.out, table, turns, published, include_human=not args.no_human,
                        extras=report_extras(table, Path(results)))
    print(f"wrote {path} (figures in {Path(args.out) / 'figures'})")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from agreemate_lib.negotiation.bench import print_report, run_bench

    r = run_bench(args.scenarios, args.turns, args.seed, args.dtype, with_llama_cpp=not args.no_llama_cpp,
                  with_profile=not args.no_profile, pairs=args.pairs, with_llama_server=not args.no_llama_server)
    print_report(r)
    if args.json:
        print(json.dumps(r))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    """Train one role's adapter on whole dialogues and write its manifest (the same code the lora_adapters asset
    runs; `--ship` then copies it to adapters/<model>/<role>)."""
    import shutil

    from agreemate_lib.core.io import frame_version
    from agreemate_lib.training.lora import LoraTrainConfig, check_resume_data, train_lora
    from agreemate_lib.training.shipping import shipped_adapter_dir, write_manifest
    from agreemate_lib.training.splits import project_role_splits

    cfg = LoraTrainConfig(**json.loads(args.config)) if args.config else LoraTrainConfig()
    df = project_role_splits(args.data, args.seed)[args.role]
    cfg = cfg.resolved(seed=args.seed)
    try:
        check_resume_data(cfg, frame_version(df))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    m = train_lora(df[df["split"] == "train"], df[df["split"] == "validation"], args.out, cfg,
                   log=lambda s: print(s, flush=True))
    manifest = write_manifest(args.out, role=args.role, training_config=cfg.model_dump(),
                              data_version=frame_version(df), metrics=m)
    print(json.dumps({k: manifest[k] for k in ("digest", "data_version", "size_bytes")} | {
        k: m[k] for k in ("perplexity_reduction", "perplexity_reduction_ci_low", "perplexity_reduction_ci_high",
                          "stop_reason", "wall_s")}))
    if args.ship:
        dest = shipped_adapter_dir(cfg.model, args.role)
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_model.safetensors", "adapter_config.json", "manifest.json", "curves.parquet"):
            shutil.copy2(Path(args.out) / name, dest / name)
        print(f"shipped to {dest}")
    return 0


def _cmd_prefer(args: argparse.Namespace) -> int:
    """Preference step (DPO) of one role's adapter on its own words-vs-price contradictions in self-play transcripts
    (``training/preference.py``); writes the adapter, its manifest and the pairs."""
    import pandas as pd

    from agreemate_lib.backends.models import file_digest
    from agreemate_lib.core.records import frame_to_negotiations
    from agreemate_lib.negotiation.roster import load_roster
    from agreemate_lib.training.preference import PreferenceConfig, prefer
    from agreemate_lib.training.splits import project_role_splits, trained_listing_keys

    cfg = PreferenceConfig(**json.loads(args.config))
    negs = [n for path in args.transcripts for n in frame_to_negotiations(pd.read_parquet(path))]
    sources = [{"path": str(p), "sha256": file_digest(p)} for p in args.transcripts]
    r = prefer(negs, args.role, load_roster(args.roster, include_disabled=True),
               project_role_splits(args.data, args.seed)[args.role], args.out, cfg,
               listings=trained_listing_keys(args.data, args.seed), sources=sources, pairs_only=args.pairs_only,
               log=lambda s: print(s, flush=True))
    if not args.pairs_only:
        print(json.dumps({k: r["manifest"][k] for k in ("digest", "data_version", "size_bytes")} | {
            k: r["metrics"][k] for k in ("validation_pair_accuracy", "perplexity_reduction", "stop_reason", "wall_s")}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agreemate",
                                description="LLM buyers and sellers haggling over Craigslist listings")
    sub = p.add_subparsers(dest="command", required=True)

    n = sub.add_parser("negotiate", help="run a batch of negotiations between a buyer and a seller")
    n.add_argument("--buyer", default="smollm2", help="roster id or shorthand (smollm2, smollm2-cot, rule-based, "
                                                      "hf:PATH, openai:MODEL@URL)")
    n.add_argument("--seller", default="smollm2")
    n.add_argument("--scenarios", type=int, default=30)
    n.add_argument("--split", default="test", choices=["paper", "heldout", "train", "validation", "test"],
                   help="paper: the paper's 30 listings; heldout: train listings never trained on; or a dataset split")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--max-turns", type=int, default=15)
    n.add_argument("--replicates", type=int, default=1)
    n.add_argument("--seller-opens", action="store_true")
    n.add_argument("--mode", choices=["batched", "naive"], default="batched")
    n.add_argument("--roster", default=None, help="roster YAML (default: agents.yaml in the repo)")
    n.add_argument("--data", default=None, help="Craigslist Bargains folder or hub id (default: the data setting)")
    n.add_argument("--out", required=True)
    n.add_argument("--quiet", action="store_true")
    n.add_argument("--dry-run", action="store_true", help="print the estimated generations and tokens, run nothing")
    n.set_defaults(func=_cmd_negotiate)

    m = sub.add_parser("metrics", help="metrics of transcripts (parquet) or AgreeMate result CSVs")
    m.add_argument("paths", nargs="+")
    m.add_argument("--formula", choices=["corrected", "paper"], default="corrected",
                   help="paper: what the published CSVs store (each file's code version is detected)")
    m.add_argument("--group-by", choices=["pair", "cot"], default="pair")
    m.add_argument("--n-boot", type=int, default=2000)
    m.add_argument("--json", action="store_true")
    m.add_argument("--paired-against", metavar="PAIR",
                   help="also test every other pair against this one, scenario by scenario (the report's paired "
                        "test); with --json the output is {\"pairs\": [...], \"paired\": [...]}")
    m.set_defaults(func=_cmd_metrics)

    b = sub.add_parser("bench", help="naive path vs the batched engine (and llama.cpp where installed)")
    b.add_argument("--scenarios", type=int, default=8)
    b.add_argument("--turns", type=int, default=6)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    b.add_argument("--no-llama-cpp", action="store_true")
    b.add_argument("--no-llama-server", action="store_true",
                   help="skip llama.cpp's own server (built by scripts/build_llama_server.sh)")
    b.add_argument("--no-profile", action="store_true", help="skip the decode-step profile (ms per step vs batch)")
    b.add_argument("--pairs", type=int, default=4,
                   help="also run this many pairs one after another and then together (0: skip)")
    b.add_argument("--json", action="store_true", help="end with one JSON line of all figures")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("train", help="fine-tune a role adapter (LoRA) on every Craigslist dialogue, whole dialogues")
    t.add_argument("role", choices=["buyer", "seller", "generalist"])
    t.add_argument("--out", required=True)
    t.add_argument("--config", default=None, help="JSON of LoraTrainConfig fields (default: the shipped settings)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data", default=None, help="Craigslist Bargains folder (default: the data setting)")
    t.add_argument("--ship", action="store_true", help="copy the result to adapters/<model>/<role>")
    t.set_defaults(func=_cmd_train)

    f = sub.add_parser("prefer", help="preference step (DPO) of a role adapter against its own words-vs-price "
                       "contradictions in self-play transcripts")
    f.add_argument("role", choices=["buyer", "seller"])
    f.add_argument("--transcripts", nargs="+", required=True, help="transcripts.parquet files of the adapter's agent")
    f.add_argument("--out", required=True)
    f.add_argument("--config", required=True, help="JSON of PreferenceConfig fields (init_from at least)")
    f.add_argument("--roster", default=None, help="roster YAML the transcripts' agents come from")
    f.add_argument("--seed", type=int, default=0, help="the role splits' seed (which listings were trained on)")
    f.add_argument("--data", default=None, help="Craigslist Bargains folder (default: the data setting)")
    f.add_argument("--pairs-only", action="store_true", help="write pairs.parquet and stop")
    f.set_defaults(func=_cmd_prefer)

    r = sub.add_parser("report", help="render the static HTML report (tables, figures, transcript browser)")
    r.add_argument("--out", required=True)
    r.add_argument("--results", default=None,
                   help="assets results folder (default: the results setting, <repo>/results)")
    r.add_argument("--published", default=None, help="folder of AgreeMate result CSVs (default: the data setting's)")
    r.add_argument("--no-human", action="store_true", help="leave out the human baseline")
    r.set_defaults(func=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as exc:
        print(f"agreemate {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
