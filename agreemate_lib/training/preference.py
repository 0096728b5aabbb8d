"""Preference fine-tuning (DPO) of a role adapter against its own words-vs-price contradictions.

The supervised adapters (``lora.py``) learn the human dialogues, yet their words name prices their price field does
not hold (``utterance_price_mismatch``; docs/finetuning_and_probing.md): mostly a turn whose act proposes nothing
(intro, inquire, inform) whose words say the agent's target aloud. The human data cannot teach the contrary (35 of
about 5,100 priceless human turns name a price), and four changes to it did not lower the mismatch. This step
teaches it from the adapter's own replies:

- **pairs** (:func:`preference_pairs`): self-play transcripts of the fine-tuned agents on listings they were trained
  on; each reply of the role whose words contradict its price field (``metrics.price_contradictions``, the metric's
  own rule) is the *rejected* reply, exactly as generated, in its context exactly as the agent saw it
  (``runner.history_for`` + ``prompts.build_messages``); the *chosen* reply is the same reply with its words made
  consistent (:func:`consistent_words`): a priceless act's sentences that name a price dropped, another price
  replaced by the one the turn holds. The two differ only where the contradiction is.
- **loss**: DPO (Rafailov et al. 2023) with the starting adapter as the reference policy (its log-probabilities
  computed once, before training), plus ``sft_weight`` x the chosen reply's mean token NLL, so the chosen replies stay
  likely rather than only the gap growing, plus (``anchor_dialogues``) the supervised NLL of whole human dialogues
  of the role: without it the adapter stopped writing numbers at all (docs/finetuning_and_probing.md);
- the adapter starts from a shipped one (``init_from``, checked by digest), trains with the layer-wise decayed
  learning rate and warm-up of ``lora.py``, keeps the step with the lowest held-out pair loss (pairs held out by
  negotiation) plus held-out human-dialogue NLL, and ends with the same held-out perplexity against the base model
  as the supervised step, so the manifest says whether the adapter still models the human dialogues.
"""

from __future__ import annotations

import json
import random
import re
import resource
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

#: A sentence and the spaces after it ("$5.99" and "5.0" do not end one: the stop must be followed by a space).
SENTENCE_RE = re.compile(r".*?(?:[.!?]+(?=\s|$)\s*|$)", re.S)


class PreferenceConfig(BaseModel):
    """Every setting of the preference step (``agreemate prefer ROLE --config JSON``)."""

    model_config = ConfigDict(frozen=True)

    model: str = "smollm2"
    init_from: str  # the adapter folder the run starts from and compares with (the reference policy)
    init_digest: str = ""  # the digest ``init_from`` must hold ("" for any)
    beta: float = 0.1
    sft_weight: float = 0.2
    #: Whole human dialogues of the role's supervised training split, per step, whose mean token NLL (times
    #: ``anchor_weight``) is added to the step's loss: the supervised objective keeps the rest of the behaviour (the
    #: reasoning's numbers, prices in priced acts) where it was. 0: DPO alone (measured: the adapter stopped writing
    #: numbers in its reasoning and agreements fell; docs/finetuning_and_probing.md).
    anchor_dialogues: int = 2
    anchor_weight: float = 1.0
    #: Held-out human dialogues whose NLL joins the held-out pairs' DPO loss in the objective that picks the step kept
    #: (the same sum the training minimises).
    anchor_validation_dialogues: int = 8
    lr: float = 1e-4
    layer_decay: float = 0.95
    min_lr_ratio: float = 0.1
    warmup_steps: int = 3
    epochs: float = 3.0
    grad_accum: int = 8
    max_length: int = 1536
    validation_fraction: float = 0.15
    eval_every: int = 4
    patience: int = 3
    max_minutes: float = 60.0  # 0: no wall-clock budget
    final_eval_dialogues: int = 64
    threads: int = 0
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # auto | bf16 | none
    seed: int = 0
    kind: Literal["dpo"] = "dpo"


def consistent_words(utterance: str, answered: float | None, listing_price: float) -> str | None:
    """``utterance`` made consistent with the price its turn holds (``answered``: the price field, or for an accept
    or reject the price it answers; None for a turn that proposes no price). No price held: the sentences naming a
    price (within 0.1 L .. 3 L, the metric's range) are dropped; a price held: every other price named is replaced by
    it. None where nothing of the words would be left."""
    from agreemate_lib.core.money import format_money, price_spans

    spans = [s for s in price_spans(utterance) if 0.1 * listing_price <= s.value <= 3 * listing_price]
    if answered is None:
        keep = [m.group(0) for m in SENTENCE_RE.finditer(utterance)
                if m.group(0) and not any(s.start < m.end() and s.end > m.start() for s in spans)]
        words = "".join(keep)
        words = words if utterance[-1:].isspace() else words.rstrip()
        return words if re.search(r"[A-Za-z]{2}", words) else None
    out, cursor = [], 0
    for s in spans:
        if abs(s.value - answered) > max(0.01, 0.005 * answered):
            out += [utterance[cursor:s.start], format_money(answered)]
            cursor = s.end
    return "".join(out) + utterance[cursor:]


def _scenario(neg) -> Any:
    from agreemate_lib.core.scenarios import Scenario

    sc = neg.scenario
    if sc.get("seller_reservation") is None:
        raise ValueError(f"negotiation {neg.negotiation_id}: its transcript has no seller bottom line; the seller's "
                         "prompt cannot be rebuilt")
    return Scenario(scenario_id=sc["scenario_id"], split=sc.get("split") or "", row=0, title=sc.get("title", ""),
                    description=sc.get("description") or "", category=sc.get("category", ""),
                    listing_price=sc["listing_price"], buyer_target=sc["buyer_target"],
                    seller_target=sc["seller_target"], seller_reservation=sc["seller_reservation"])


def preference_pairs(negotiations, role: str, agents: dict[str, Any], max_turns: int = 15,
                     listings: frozenset[str] | set[str] | None = None) -> tuple[list[dict], dict[str, int]]:
    """(pairs, counts) from transcripts: one pair per reply of ``role`` whose words contradict its price field.

    ``agents``: agent id -> ``AgentSpec`` (personality and chain of thought rebuild its system prompt); a negotiation
    whose ``role`` agent is not in it is skipped. Replies not produced by constrained decoding at the first try, or
    whose JSON does not re-render to the text generated, are skipped and counted (their context could not be rebuilt
    exactly). ``listings``: where given, only negotiations on these listings (``splits.listing_key``) count (pass the
    listings the adapter was trained on: evaluation listings never enter training)."""
    from agreemate_lib.evaluation.metrics import answered_prices, metric_inputs, price_contradictions
    from agreemate_lib.negotiation.prompts import build_messages, ordered_reply, system_prompt
    from agreemate_lib.negotiation.runner import history_for
    from agreemate_lib.training.splits import listing_key

    counts = {"negotiations": 0, "turns_naming_a_price": 0, "contradicting": 0, "not_first_try_structured": 0,
              "not_rerendered": 0, "no_words_left": 0, "other_listing": 0, "pairs": 0}
    pairs = []
    for neg in negotiations:
        spec = agents.get(neg.buyer_id if role == "buyer" else neg.seller_id)
        if spec is None or neg.outcome == "error":
            continue
        if listings is not None and listing_key(neg.scenario.get("title", "")) not in listings:
            counts["other_listing"] += 1
            continue
        counts["negotiations"] += 1
        x = metric_inputs(neg.to_outcome())
        said, bad = price_contradictions(x)
        answered = answered_prices(x)
        counts["turns_naming_a_price"] += sum(neg.turns[k].speaker == role for k in said)
        for k in bad:
            t = neg.turns[k]
            if t.speaker != role:
                continue
            counts["contradicting"] += 1
            if not (t.structured and t.retries == 0 and t.raw_output):
                counts["not_first_try_structured"] += 1
                continue
            reply = json.loads(t.raw_output)
            if json.dumps(ordered_reply(reply)) != t.raw_output:
                counts["not_rerendered"] += 1
                continue
            words = consistent_words(reply.get("utterance") or "", answered[k], x.L)
            if words is None:
                counts["no_words_left"] += 1
                continue
            sc = _scenario(neg)
            system = system_prompt(role, sc.view_for(role), spec.personality, spec.cot, max_turns)
            opens = neg.turns[0].speaker == role
            context = build_messages(role, system, history_for(neg.turns[:k], role), max_turns, opens)
            pairs.append({"negotiation_id": neg.negotiation_id, "turn_index": k, "role": role,
                          "listing_key": listing_key(sc.title), "action": t.action, "answered": answered[k],
                          "context": context, "rejected": t.raw_output,
                          "chosen": json.dumps(ordered_reply(reply | {"utterance": words}))})
    counts["pairs"] = len(pairs)
    return pairs, counts


def encode_pair(tok, pair: dict) -> dict:
    """Token ids and labels of the chosen and the rejected reply in their context (labels on the reply and its
    end-of-turn token only), and ``shared``: how many leading tokens the two sequences have in common (the context and
    the reply up to where the words differ)."""
    from agreemate_lib.training.lora import encode_dialogue

    ctx = pair["context"]
    mask = [False] * len(ctx) + [True]
    enc = {side: encode_dialogue(tok, ctx + [{"role": "assistant", "content": pair[side]}], mask)
           for side in ("chosen", "rejected")}
    c, r = enc["chosen"]["input_ids"], enc["rejected"]["input_ids"]
    shared = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
    return enc | {"shared": shared}


def pairs_version(pairs: list[dict]) -> str:
    """A digest of the pairs (contexts and replies), recorded in the manifest as its data version."""
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p["context"], p["chosen"], p["rejected"]], sort_keys=True).encode())
    return h.hexdigest()[:16]


def split_pairs(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): whole negotiations held out, seeded."""
    ids = sorted({p["negotiation_id"] for p in pairs})
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, round(fraction * len(ids)))]) if len(ids) > 1 else set()
    return [p for p in pairs if p["negotiation_id"] not in held], [p for p in pairs if p["negotiation_id"] in held]


def _suffix_logps(model, enc: dict, device: str) -> tuple[list, list[int]]:
    """Summed log-probabilities of the chosen and the rejected reply's tokens after the tokens they share, and how
    many tokens each sum covers. The shared tokens (context, reasoning, act, the words before the first change) are
    encoded once, without gradient, into a KV cache both suffixes continue from: their log-probabilities are the same
    in both replies and cancel in the DPO logit, so only the suffixes count; the gradient reaches the suffixes'
    own positions, not the shared tokens' keys and values (a truncation, which makes a step cost two short suffixes
    instead of two whole dialogues)."""
    import torch

    n = enc["shared"]
    if n < 2:
        raise ValueError("a preference pair whose chosen and rejected sequences share no context")
    with torch.no_grad():
        cache = model(input_ids=torch.tensor([enc["chosen"]["input_ids"][: n - 1]], device=device),
                      use_cache=True).past_key_values
    out, counts = [], []
    for side in ("chosen", "rejected"):
        ids, labels = enc[side]["input_ids"], enc[side]["labels"]
        extra = cache.get_seq_length() - (n - 1)
        if extra:  # the chosen suffix's entries: the rejected suffix continues from the shared tokens
            cache.crop(-extra)
        logits = model(input_ids=torch.tensor([ids[n - 1:]], device=device), past_key_values=cache,
                       use_cache=True).logits[0, :-1].float()
        target = torch.tensor(ids[n:], device=device)
        keep = torch.tensor(labels[n:], device=device) != -100
        lp = torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
        out.append(lp[keep].sum())
        counts.append(int(keep.sum()))
    return out, counts


def dpo_terms(model, enc: dict, ref: tuple[float, float], cfg: PreferenceConfig, device: str):
    """(loss, DPO logit) of one pair: -log sigmoid(beta * ((chosen - ref chosen) - (rejected - ref rejected))) +
    sft_weight * the chosen suffix's mean token NLL; log-probabilities of the replies' differing suffixes."""
    import torch.nn.functional as F

    (lp_c, lp_r), (n_c, _) = _suffix_logps(model, enc, device)
    logit = cfg.beta * ((lp_c - ref[0]) - (lp_r - ref[1]))
    return -F.logsigmoid(logit) + cfg.sft_weight * -lp_c / max(1, n_c), logit


def reference_logps(model, encoded: list[dict], device: str, autocast) -> list[tuple[float, float]]:
    """The starting adapter's summed log-probabilities of each pair's chosen and rejected suffix."""
    from agreemate_lib.training.lora import evaluated

    def one(e):
        (c, r), _ = _suffix_logps(model, e, device)
        return float(c), float(r)

    return evaluated(model, encoded, one, autocast)


def evaluate_pairs(model, encoded, refs, cfg, device, autocast) -> dict:
    """Held-out DPO loss, preference accuracy (share of pairs whose logit is > 0) and mean logit."""
    from agreemate_lib.training.lora import evaluated

    terms = evaluated(model, list(zip(encoded, refs)),
                      lambda er: tuple(float(v) for v in dpo_terms(model, er[0], er[1], cfg, device)), autocast)
    losses, logits = [t[0] for t in terms], [t[1] for t in terms]
    n = max(1, len(losses))
    return {"loss": sum(losses) / n, "accuracy": sum(v > 0 for v in logits) / n, "mean_logit": sum(logits) / n}


def train_preference(pairs: list[dict], validation_dialogues, out_dir: str | Path, cfg: PreferenceConfig,
                     device: str = "auto", log=print, anchor=None) -> dict:
    """Train the adapter in ``cfg.init_from`` further on ``pairs``; returns its metrics (also ``metrics.json``).
    ``anchor``: the role's supervised training dialogues (rows as ``splits.dialogue_frame`` builds them), needed
    when ``cfg.anchor_dialogues`` > 0."""

    import pandas as pd
    import torch
    from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

    from agreemate_lib.backends.models import load_model
    from agreemate_lib.training.lora import (
        BestSoFar,
        autocast_factory,
        encode_dialogues,
        example_loss,
        layer_param_groups,
        lr_multiplier,
        mean_loss,
        perplexity_reduction,
        save_adapter,
        sequence_losses,
        start_weights,
    )

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    init = start_weights(cfg.init_from)
    if cfg.init_digest and init["digest"] != cfg.init_digest:
        from agreemate_lib.training.shipping import AdapterDigestError

        raise AdapterDigestError(f"init_from {init['folder']} holds adapter {init['digest']}, but this run starts from "
                                 f"{cfg.init_digest}: the starting adapter was replaced")
    tok, base = load_model(cfg.model, dtype="fp32", device=device, trainable=True)
    base.config.use_cache = False
    model = PeftModel.from_pretrained(base, init["folder"], is_trainable=True)
    for p in model.parameters():  # shipped in bf16: train in fp32 (autocast computes in bf16 where it may)
        if p.requires_grad:
            p.data = p.data.to(torch.float32)
    set_peft_model_state_dict(model, {k: v.to(torch.float32) for k, v in init["weights"].items()})
    autocast, use_bf16 = autocast_factory(cfg.mixed_precision, device)

    train_p, val_p = split_pairs(pairs, cfg.validation_fraction, cfg.seed)

    def encode(ps):
        out = [encode_pair(tok, p) for p in ps]
        return [e for e in out if max(len(e["chosen"]["input_ids"]), len(e["rejected"]["input_ids"])) <= cfg.max_length]

    train_e, val_e = encode(train_p), encode(val_p)
    anchor_e: list[dict] = []
    if cfg.anchor_dialogues:
        if anchor is None or not len(anchor):
            raise ValueError("anchor_dialogues > 0 needs the role's supervised training dialogues (anchor)")
        anchor_e, _ = encode_dialogues(tok, anchor.sample(frac=1.0, random_state=cfg.seed), cfg.max_length)
    if not train_e or not val_e:
        raise ValueError(f"too few usable pairs (train {len(train_e)}, validation {len(val_e)} of {len(pairs)})")
    log(f"{len(train_e)} training pairs, {len(val_e)} held out; reference log-probabilities ...")
    train_ref = reference_logps(model, train_e, device, autocast)
    val_ref = reference_logps(model, val_e, device, autocast)
    # held-out human dialogues, in the supervised step's order: the first final_eval_dialogues measure perplexity at
    # the end; the step kept is chosen on the ones after them
    val_all, _ = encode_dialogues(tok, validation_dialogues.sample(frac=1.0, random_state=0), 1536)
    n_final = cfg.final_eval_dialogues or len(val_all)
    val_anchor = val_all[n_final: n_final + cfg.anchor_validation_dialogues] if cfg.anchor_dialogues else []
    val_all = val_all[:n_final]

    def held_out() -> dict:
        ev = evaluate_pairs(model, val_e, val_ref, cfg, device, autocast)
        ev["anchor_loss"] = mean_loss(sequence_losses(model, val_anchor, device, autocast)) if val_anchor else 0.0
        return ev | {"objective": ev["loss"] + cfg.anchor_weight * ev["anchor_loss"] * bool(val_anchor)}

    start = held_out()
    log(f"held-out pairs at the start: {start}")

    groups = layer_param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
    base_lrs = [g["lr"] for g in groups]
    steps = max(1, round(cfg.epochs * len(train_e) / cfg.grad_accum))
    order = list(range(len(train_e)))
    rng = random.Random(cfg.seed)
    rng.shuffle(order)
    cursor, anchor_cursor, curves, stop_reason = 0, 0, [], "all epochs"
    # no step that beats the start on held-out data: the starting weights are kept
    weights = {k: t.detach().clone() for k, t in get_peft_model_state_dict(model).items()}
    best = BestSoFar(start["objective"], -1, weights, eval=start)
    model.train()
    for step in range(steps):
        mult = lr_multiplier(step, _Schedule(cfg.warmup_steps, steps, cfg.min_lr_ratio))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * mult
        t0 = time.perf_counter()
        losses, logits = [], []
        for _ in range(cfg.grad_accum):
            if cursor and cursor % len(order) == 0:
                rng.shuffle(order)
            i = order[cursor % len(order)]
            cursor += 1
            with autocast():
                loss, logit = dpo_terms(model, train_e[i], train_ref[i], cfg, device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite preference loss at step {step}: {loss.item()}")
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
            logits.append(logit.item())
        anchor_losses = []
        for _ in range(cfg.anchor_dialogues):
            e = anchor_e[anchor_cursor % len(anchor_e)]
            anchor_cursor += 1
            with autocast():
                nll, n = example_loss(model, e, device)
                a_loss = cfg.anchor_weight * nll / max(1, n)
            (a_loss / cfg.anchor_dialogues).backward()
            anchor_losses.append(a_loss.item())
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        row = {"step": step, "loss": sum(losses) / len(losses),
               "anchor_loss": sum(anchor_losses) / len(anchor_losses) if anchor_losses else float("nan"),
               "accuracy": sum(v > 0 for v in logits) / len(logits),
               "mean_logit": sum(logits) / len(logits), "grad_norm": grad_norm, "lr_multiplier": mult,
               "step_s": time.perf_counter() - t0, "epoch": cursor / len(train_e), "validation_loss": float("nan"),
               "validation_accuracy": float("nan")}
        over_time = cfg.max_minutes and (time.perf_counter() - t_start) / 60 > cfg.max_minutes
        if (step + 1) % cfg.eval_every == 0 or step + 1 == steps or over_time:
            ev = held_out()
            row |= {"validation_loss": ev["loss"], "validation_accuracy": ev["accuracy"],
                    "validation_mean_logit": ev["mean_logit"], "validation_anchor_loss": ev["anchor_loss"],
                    "validation_objective": ev["objective"]}
            best.offer(ev["objective"], step, model, eval=ev)
            log(f"step {step + 1}: held-out {ev} (best {best.value:.4f} at step {best.step + 1})")
        curves.append(row)
        log(f"step {step + 1}/{steps} loss {row['loss']:.4f} anchor {row['anchor_loss']:.4f} acc {row['accuracy']:.2f} "
            f"logit {row['mean_logit']:.3f} |g| {grad_norm:.2f} {row['step_s']:.1f} s epoch {row['epoch']:.2f}")
        if reason := best.stop_reason(cfg.patience, over_time, cfg.max_minutes, "held-out"):
            stop_reason = reason
            break
    set_peft_model_state_dict(model, best.state)
    kept = best.extra["eval"]
    log(f"stopped: {stop_reason}; keeping step {best.step + 1}; held-out perplexity on {len(val_all)} dialogues")
    tuned = sequence_losses(model, val_all, device, autocast)
    with model.disable_adapter():
        base_l = sequence_losses(model, val_all, device, autocast)
    ppl = perplexity_reduction(base_l, tuned, seed=0)
    out = Path(out_dir)
    save_adapter(model, out)
    pd.DataFrame(curves).to_parquet(out / "curves.parquet", index=False)
    metrics = {
        "kind": "dpo", "steps": len(curves), "best_step": best.step + 1, "stop_reason": stop_reason,
        "pairs": len(pairs), "train_pairs": len(train_e), "validation_pairs": len(val_e),
        "pairs_version": pairs_version(pairs), "initialized_from_digest": init["digest"],
        "start_validation_loss": start["loss"], "start_validation_accuracy": start["accuracy"],
        "validation_pair_loss": kept["loss"], "validation_pair_accuracy": kept["accuracy"],
        "validation_pair_mean_logit": kept["mean_logit"],
        "validation_anchor_loss": kept["anchor_loss"], "start_validation_anchor_loss": start["anchor_loss"],
        "validation_loss": mean_loss(tuned), "base_validation_loss": mean_loss(base_l),
        "validation_perplexity": ppl["perplexity"], "base_validation_perplexity": ppl["base_perplexity"],
        "perplexity_reduction": ppl["perplexity_reduction"],
        "perplexity_reduction_ci_low": ppl["perplexity_reduction_ci_low"],
        "perplexity_reduction_ci_high": ppl["perplexity_reduction_ci_high"], "validation_dialogues": len(val_all),
        "wall_s": time.perf_counter() - t_start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mixed_precision": "bf16" if use_bf16 else "fp32", "device": device,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "training_config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    return metrics


def prefer(negotiations, role: str, agents: dict[str, Any], role_split, out_dir: str | Path, cfg: PreferenceConfig,
           listings: frozenset[str] | set[str] | None, sources: list[dict] | None = None, pairs_only: bool = False,
           log=print) -> dict:
    """The whole preference step of one role, as ``agreemate prefer`` and the ``preference_adapters`` asset run it:
    pairs from ``negotiations`` on ``listings`` (written to ``pairs.parquet``), then :func:`train_preference` with the
    role split's held-out Craigslist dialogues (no Deal or No Deal: those the supervised step measured) and its
    training dialogues as the anchor, then ``manifest.json`` (``sources``: the transcripts, as path and sha256).
    Returns ``{"counts": ..., "pairs": n}`` plus, unless ``pairs_only``, ``"metrics"`` and ``"manifest"``."""
    import pandas as pd

    from agreemate_lib.training.shipping import write_manifest

    pairs, counts = preference_pairs(negotiations, role, agents, listings=listings)
    log(json.dumps({"pairs": counts}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([p | {"context": json.dumps(p["context"])} for p in pairs]).to_parquet(out / "pairs.parquet")
    result: dict[str, Any] = {"counts": counts, "pairs": len(pairs)}
    if pairs_only:
        return result
    df = role_split[role_split["source"] == "craigslist"]
    m = train_preference(pairs, df[df["split"] == "validation"], out, cfg, log=log,
                         anchor=df[df["split"] == "train"])
    m = m | {"pair_counts": counts, "transcripts": list(sources or [])}
    manifest = write_manifest(out, role=role, training_config=cfg.model_dump(), data_version=pairs_version(pairs),
                              metrics=m)
    return result | {"metrics": m, "manifest": manifest}


class _Schedule:
    """The fields ``lora.lr_multiplier`` reads: warm-up, then one cosine from 1 to ``min_lr_ratio`` over the run."""

    def __init__(self, warmup_steps: int, steps: int, min_lr_ratio: float):
        self.warmup_steps, self.cycle_steps, self.min_lr_ratio = warmup_steps, max(1, steps), min_lr_ratio
