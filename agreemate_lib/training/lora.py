"""LoRA fine-tuning of a role adapter, the paper's recipe done for real.

- peft LoRA (default r=32, alpha=16, dropout 0.05 on q/k/v/o; MLP projections on request);
- whole-dialogue sequences: one forward pass per dialogue and role, the loss on every target turn of that role (the
  assistant messages ``train_mask`` marks, and their end-of-turn token); everything else is masked with -100;
- a cyclic learning rate: cosine decay to ``min_lr_ratio`` with a restart every ``cycle_steps`` (visible in the
  curves), after a short linear warm-up;
- layer-wise learning-rate decay: layer i of L gets ``lr * layer_decay ** (L - 1 - i)`` (lower layers smaller);
- gradient checkpointing, gradient accumulation to an effective batch, bf16 autocast where the hardware has it;
- 4-bit nf4 quantisation of the base (QLoRA) through bitsandbytes: CUDA, or its CPU backend where it works; a clear
  message and a bf16/fp32 fallback otherwise;
- an EMA of the training loss initialised at the first loss (not at 0), reported beside the raw loss; seeded;
- early stopping on held-out validation loss (every ``eval_every`` steps on ``val_examples`` dialogues, ``patience``
  evaluations without improvement), the best adapter kept, within a wall-clock budget (``max_minutes``);
- held-out perplexity of the role's turns, adapter vs base model on the validation dialogues (``final_eval_dialogues``
  of them; 0 = all), with a bootstrap CI over dialogues for the reduction;
- resuming (``resume_from``: an earlier run's folder): its adapter weights, its place in the data order, its step
  count (the learning-rate schedule goes on where it was; the optimizer's moments start afresh, so the first
  ``warmup_steps`` warm up again) and its curves, so several wall-clock budgets add up to one longer training;
- starting from another adapter (``init_from``: its folder): its weights only, checked by digest; steps, data order
  and curves start afresh (fine-tuning an adapter further on other data, e.g. after the reply contract changed).

Saved as a peft adapter (``adapter_model.safetensors`` in bf16 + ``adapter_config.json``) with
``training_config.json``, ``metrics.json`` and ``curves.parquet``.
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict


class LoraTrainConfig(BaseModel):
    """Every training setting, in one place (the Dagster asset's run config is this class). Defaults: the settings the
    shipped SmolLM2 adapters were trained with on a 2-core CPU (bf16 autocast, no quantization and no gradient
    checkpointing: on this CPU nf4 and checkpointing only slow a 135M model down; early stopping within an hour);
    ``preset: full`` selects the paper-scale GPU settings of :meth:`full` (nf4, checkpointing, Deal or No Deal)."""

    model_config = ConfigDict(frozen=True)

    preset: Literal["default", "full"] = "default"
    model: str = "smollm2"
    r: int = 32
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    include_mlp: bool = False
    lr: float = 1e-3
    layer_decay: float = 0.95
    min_lr_ratio: float = 0.1
    warmup_steps: int = 5
    cycle_steps: int = 30
    max_steps: int = 400
    micro_batch: int = 1
    grad_accum: int = 8
    max_length: int = 1536
    val_examples: int = 16
    eval_every: int = 8
    patience: int = 3
    max_minutes: float = 60.0  # 0: no wall-clock budget
    final_eval_dialogues: int = 64  # 0: every validation dialogue
    include_dond: bool = False
    threads: int = 0  # 0: torch's default
    ema_alpha: float = 0.9
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto | bf16 | none
    quantization: str = "none"  # none | nf4 | auto (nf4 where bitsandbytes works)
    seed: int = 0
    train_examples: int = 0  # 0: all
    resume_from: str = ""  # an earlier run's folder (adapter, manifest.json or metrics.json, curves.parquet)
    init_from: str = ""  # an adapter folder whose weights start this run (relative paths: to the repository too)
    #: The digest ``init_from`` must hold ("" for any): set when a shipped adapter is rebuilt, so a folder that was
    #: overwritten since (a retrained adapter shipped where its starting weights were) is never taken silently.
    init_digest: str = ""

    @classmethod
    def full(cls) -> LoraTrainConfig:
        """Paper-scale settings for a GPU (3B base, all examples, longer schedule)."""
        return cls(preset="full", model="meta-llama/Llama-3.2-3B-Instruct", max_steps=1500, micro_batch=4,
                   grad_accum=4, max_length=2048, val_examples=64, eval_every=50, cycle_steps=300, warmup_steps=50,
                   lr=2e-4, layer_decay=0.9, max_minutes=0, final_eval_dialogues=0, gradient_checkpointing=True,
                   quantization="nf4", include_dond=True)

    def resolved(self, seed: int | None = None) -> LoraTrainConfig:
        """The settings a run uses: the preset's, with the study's seed."""
        base = LoraTrainConfig.full() if self.preset == "full" else self
        return base.model_copy(update={} if seed is None else {"seed": seed})

    def modules(self) -> list[str]:
        return list(self.target_modules) + (["gate_proj", "up_proj", "down_proj"] if self.include_mlp else [])


def lr_multiplier(step: int, cfg: LoraTrainConfig) -> float:
    """Linear warm-up, then cosine from 1 to ``min_lr_ratio`` restarting every ``cycle_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    pos = (step - cfg.warmup_steps) % max(1, cfg.cycle_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * pos / max(1, cfg.cycle_steps)))


def ema_update(prev: float | None, value: float, alpha: float) -> float:
    """EMA initialised at the first value (an EMA started at 0 understates early losses)."""
    return value if prev is None else alpha * prev + (1 - alpha) * value


def load_base(cfg: LoraTrainConfig, device: str):
    """(tokenizer, model, quantization used, note). nf4 needs a safetensors source (the converted embedded model)."""
    from agreemate_lib.backends.models import load_model

    note = ""
    if cfg.quantization in ("auto", "nf4"):
        try:
            tok, model = load_model(cfg.model, dtype=None, device=device, quantization="nf4", double_quant=True,
                                    trainable=True)
            return tok, model, "nf4", f"bitsandbytes 4-bit nf4 on {device}"
        except Exception as exc:  # noqa: BLE001 - fall back, saying why
            if cfg.quantization == "nf4":
                raise RuntimeError(f"4-bit nf4 was requested but bitsandbytes cannot run it on {device}: "
                                   f"{exc}") from exc
            note = f"nf4 unavailable on {device} ({type(exc).__name__}: {exc}); trained unquantized"
    tok, model = load_model(cfg.model, dtype="fp32", device=device, trainable=True)
    return tok, model, "none", note


def encode_dialogue(tok, messages: list[dict], train_mask: list[bool]) -> dict:
    """Token ids of the whole chat (the model's own template) and labels: the token ids inside each marked assistant
    message and its end-of-turn token, -100 elsewhere. Tokenized once as one text, as the agents' prompts are."""
    text = tok.apply_chat_template(messages, tokenize=False)
    spans, cursor = [], 0
    for i, (m, on) in enumerate(zip(messages, train_mask)):
        upto = tok.apply_chat_template(messages[: i + 1], tokenize=False)
        if not text.startswith(upto):
            raise ValueError("the chat template does not render prefixes of a chat as prefixes; cannot mask turns")
        if on:
            start = upto.rfind(m["content"], cursor)
            if start < 0:
                raise ValueError(f"message {i} not found in the rendered chat")
            end = start + len(m["content"])
            if tok.eos_token and upto.startswith(tok.eos_token, end):
                end += len(tok.eos_token)
            spans.append((start, end))
        cursor = len(upto)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels, k = enc["input_ids"], [], 0
    for tid, (a, _b) in zip(ids, enc["offset_mapping"]):
        while k < len(spans) and a >= spans[k][1]:
            k += 1
        labels.append(tid if k < len(spans) and spans[k][0] <= a < spans[k][1] else -100)
    return {"input_ids": list(ids), "labels": labels}


def encode_dialogues(tok, frame: pd.DataFrame, max_length: int) -> tuple[list[dict], int]:
    """Whole-dialogue rows (``messages``, ``train_mask`` as JSON) -> examples; rows longer than ``max_length`` or
    without a target are skipped (cutting a dialogue would teach the wrong thing); returns (examples, skipped)."""
    out, skipped = [], 0
    for r in frame.itertuples(index=False):
        ex = encode_dialogue(tok, json.loads(r.messages), json.loads(r.train_mask))
        if len(ex["input_ids"]) > max_length or all(x == -100 for x in ex["labels"]):
            skipped += 1
            continue
        out.append(ex | {"dialogue_id": r.dialogue_id})
    return out, skipped


def canonical_adapter_config(folder: str | Path) -> None:
    """Rewrite ``adapter_config.json`` with its module lists sorted: peft writes ``target_modules`` from a set, whose
    order changes between processes (string hashing), so the same training would otherwise give another digest."""
    path = Path(folder) / "adapter_config.json"
    cfg = json.loads(path.read_text())
    for key in ("target_modules", "modules_to_save"):
        if isinstance(cfg.get(key), list):
            cfg[key] = sorted(cfg[key])
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def example_loss(model, example: dict, device: str):
    """Summed cross-entropy of one example's target tokens, and their count. Logits are computed only at the
    positions that predict a target (``logits_to_keep``): the vocabulary projection of every other position (about
    three quarters of a dialogue's tokens: system prompt, the other side's turns) is skipped; the value is the same."""
    import torch

    ids = torch.tensor([example["input_ids"]], device=device)
    labels = torch.tensor(example["labels"], device=device)
    pos = (labels[1:] != -100).nonzero().flatten()  # position p predicts token p + 1
    if not len(pos):
        return torch.zeros((), device=device), 0
    logits = model(input_ids=ids, logits_to_keep=pos).logits.float().reshape(len(pos), -1)
    return torch.nn.functional.cross_entropy(logits, labels[pos + 1], reduction="sum"), len(pos)


def evaluated(model, items, fn, autocast) -> list:
    """``fn(item)`` for each item with the model in eval mode, without gradient, under ``autocast``; the model goes
    back to training mode after (held-out losses of both trainers)."""
    import torch

    model.eval()
    try:
        with torch.no_grad():
            out = []
            for item in items:
                with autocast():
                    out.append(fn(item))
            return out
    finally:
        model.train()


def sequence_losses(model, examples: list[dict], device: str, autocast) -> list[tuple[float, int]]:
    """(summed loss, target tokens) per example, one forward pass each."""

    def one(e):
        lp, n = example_loss(model, e, device)
        return lp.item(), n

    return evaluated(model, examples, one, autocast)


def autocast_factory(mixed_precision: str, device: str):
    """A callable giving the training's autocast context: bf16 where ``mixed_precision`` is bf16, or auto and the
    device has it; otherwise no autocast. Returns (factory, whether bf16 is used)."""
    import contextlib

    import torch

    from agreemate_lib.backends.models import bf16_supported

    use_bf16 = mixed_precision == "bf16" or (mixed_precision == "auto" and bf16_supported(device))

    def autocast():
        if use_bf16:
            return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return autocast, use_bf16


def save_adapter(model, out: Path) -> None:
    """Save the trainable adapter in bf16 (half the bytes; peft casts it back on load) as safetensors, its config
    written in one order (:func:`canonical_adapter_config`)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    canonical_adapter_config(out)


def mean_loss(losses: list[tuple[float, int]]) -> float:
    return sum(a for a, _ in losses) / max(1, sum(n for _, n in losses))


def perplexity_reduction(base: list[tuple[float, int]], tuned: list[tuple[float, int]], n_boot: int = 2000,
                         seed: int = 0) -> dict:
    """Token-level perplexity of base and tuned on the same sequences, and ``1 - ppl_tuned / ppl_base`` with a
    bootstrap 95% CI over sequences (dialogues)."""
    import numpy as np

    b = np.array(base, dtype=float)
    t = np.array(tuned, dtype=float)
    rng = np.random.default_rng(seed)

    def red(ix):
        return 1 - math.exp(t[ix, 0].sum() / t[ix, 1].sum()) / math.exp(b[ix, 0].sum() / b[ix, 1].sum())

    boots = [red(rng.integers(0, len(b), len(b))) for _ in range(n_boot)]
    allix = np.arange(len(b))
    return {"base_perplexity": math.exp(b[:, 0].sum() / b[:, 1].sum()),
            "perplexity": math.exp(t[:, 0].sum() / t[:, 1].sum()), "perplexity_reduction": red(allix),
            "perplexity_reduction_ci_low": float(np.percentile(boots, 2.5)),
            "perplexity_reduction_ci_high": float(np.percentile(boots, 97.5)), "sequences": len(b)}


class BestSoFar:
    """Early stopping's bookkeeping: the lowest held-out value so far, its step, the adapter weights then (``state``)
    and anything to keep beside them (``extra``), and how many evaluations since it improved (``stale``)."""

    def __init__(self, value: float, step: int, state: dict | None, **extra):
        self.value, self.step, self.state, self.extra, self.stale = value, step, state, extra, 0

    def offer(self, value: float, step: int, model, **extra) -> None:
        """A new evaluation: kept (with the model's adapter weights) if it beats the best by more than 1e-4."""
        from peft import get_peft_model_state_dict

        if value < self.value - 1e-4:
            self.value, self.step, self.extra, self.stale = value, step, extra, 0
            self.state = {k: t.detach().clone() for k, t in get_peft_model_state_dict(model).items()}
        else:
            self.stale += 1

    def stop_reason(self, patience: int, over_time, max_minutes, what: str) -> str | None:
        """Why training stops after this evaluation (``None``: it goes on): ``patience`` evaluations without a
        better ``what`` value, or the wall-clock budget spent (``over_time``)."""
        if self.stale >= patience:
            return f"early stop: no {what} improvement in {patience} evaluations"
        if over_time:
            return f"wall-clock budget of {max_minutes} minutes"
        return None


def layer_param_groups(model, cfg: LoraTrainConfig) -> list[dict]:
    """One optimizer group per transformer layer, with layer-wise decayed learning rates."""
    import re

    groups: dict[int, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = re.search(r"layers\.(\d+)\.", name)
        groups.setdefault(int(m.group(1)) if m else -1, []).append(p)
    n_layers = max(groups) + 1
    out = []
    for layer, params in sorted(groups.items()):
        depth = n_layers - 1 - layer if layer >= 0 else 0
        out.append({"params": params, "lr": cfg.lr * cfg.layer_decay ** depth, "layer": layer})
    return out


def reproduction_stages(manifest: dict) -> list[LoraTrainConfig]:
    """The runs that rebuild a shipped adapter, oldest first: its own config and, for a resumed adapter, each run of
    the chain it resumed (``manifest['previous']``), each for exactly the steps it ran (a wall-clock budget depends
    on the machine's speed, a step count does not). Every stage after the first resumes from the one before it: the
    caller sets ``resume_from`` to where that stage's output went. A run started from another adapter's weights
    (``init_from``) is the first stage: those weights (checked by digest) are its input, the runs that made them are
    not repeated, as long as the folder still holds them (the stage carries their digest, ``init_digest``); where it
    no longer does (a retrained adapter was shipped into the folder it started from), the runs that made them come
    first, from their manifest kept as ``previous``, and the caller starts this stage from their output (an
    ``init_from`` stage after the first: ``init_from`` replaced, ``init_digest`` cleared)."""
    from agreemate_lib.training.shipping import adapter_digest

    chain = []
    m: dict | None = manifest
    while m is not None:
        chain.append(m)
        m = m.get("previous")
    # a run started from another adapter's weights (init_from) is where the chain starts: those weights are its input
    first = next((k for k, m in enumerate(chain) if m["training_config"].get("init_from")), len(chain) - 1)
    ancestors: list[LoraTrainConfig] = []
    start = chain[first]
    want = start["metrics"].get("initialized_from_digest", "")
    if start["training_config"].get("init_from") and want:
        folder = run_folder(start["training_config"]["init_from"])
        held = adapter_digest(folder) if (folder / "adapter_model.safetensors").is_file() else None
        if held != want:
            if start.get("previous") is None:
                raise ValueError(f"the adapter this one started from ({want}) is no longer in {folder}, and its "
                                 "manifest does not record how it was made")
            ancestors = reproduction_stages(start["previous"])
    chain = chain[: first + 1]
    stages, done = [], 0
    for m in reversed(chain):
        steps = int(m["metrics"]["steps"])
        init_digest = m["metrics"].get("initialized_from_digest", "") if m["training_config"].get("init_from") else ""
        cfg = LoraTrainConfig(**m["training_config"]).model_copy(
            update={"max_steps": steps, "max_minutes": 0.0, "resume_from": "", "init_digest": init_digest})
        if int(m["metrics"].get("resumed_at_step", 0)) != done:
            raise ValueError(f"the manifest chain is broken: a run resumed at step "
                             f"{m['metrics'].get('resumed_at_step', 0)} after a run of {done} steps")
        stages.append(cfg)
        done = steps
    return ancestors + stages


def check_resume_data(cfg: LoraTrainConfig, data_version: str) -> None:
    """A resumed run must train on the data its earlier run trained on (its place in the data order would not carry
    over otherwise); ``init_from`` exists for starting from an adapter trained on other data."""
    from agreemate_lib.training.shipping import read_manifest

    if not cfg.resume_from:
        return
    previous = read_manifest(run_folder(cfg.resume_from)) or {}
    if previous.get("data_version") not in (None, data_version):
        raise ValueError(f"resume_from {cfg.resume_from} trained on data version {previous['data_version']}, this "
                         f"data is {data_version}: resuming would not continue the same data order (init_from starts "
                         "from its weights instead)")


def run_folder(path: str | Path) -> Path:
    """An earlier run's folder as a config names it: as given, else relative to the repository (shipped adapters)."""
    from agreemate_lib.core.settings import repo_root

    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return repo_root() / p if (repo_root() / p).exists() else p


def start_weights(folder: str | Path) -> dict:
    """The adapter weights a run starts from (``init_from``, and the first part of :func:`resume_state`): the folder,
    its digest (checked against its manifest where it has one) and the weights. A folder without a manifest (an
    adapter trained elsewhere) is still named by its digest."""
    from safetensors.torch import load_file

    from agreemate_lib.training.shipping import adapter_digest, verify_adapter

    folder = run_folder(folder)
    if not (folder / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(f"no adapter to start from in {folder} (adapter_model.safetensors missing)")
    digest = verify_adapter(folder) or adapter_digest(folder)
    return {"folder": str(folder), "digest": digest, "weights": load_file(str(folder / "adapter_model.safetensors"))}


def resume_state(folder: str | Path) -> dict:
    """What a resumed run continues from: the earlier run's adapter weights (:func:`start_weights`), how many steps
    and examples it ran, its curves, and its manifest (kept in the new one as ``previous``)."""
    from agreemate_lib.training.shipping import read_manifest

    start = start_weights(folder)
    folder = Path(start["folder"])
    manifest = read_manifest(folder)
    metrics = manifest["metrics"] if manifest else json.loads((folder / "metrics.json").read_text())
    if "examples_seen" in metrics:
        seen = int(metrics["examples_seen"])
    else:  # runs before examples_seen was recorded: the epochs they ran over their training dialogues
        seen = round(metrics["epochs"] * metrics["train_dialogues"])
    curves = folder / "curves.parquet"
    return start | {
        "steps": int(metrics["steps"]), "examples_seen": seen, "train_dialogues": int(metrics["train_dialogues"]),
        "curves": pd.read_parquet(curves) if curves.is_file() else pd.DataFrame(), "manifest": manifest,
        "wall_s": float(metrics.get("wall_s", 0.0)), "tokens": int(metrics.get("tokens", 0))}


def train_lora(train: pd.DataFrame, validation: pd.DataFrame, out_dir: str | Path,
               cfg: LoraTrainConfig = LoraTrainConfig(), device: str = "auto", log=print) -> dict:
    """Train one adapter on whole-dialogue rows (see ``training/splits.py``); returns its metrics (also written to
    ``out_dir/metrics.json``)."""

    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.include_dond and "source" in train.columns:
        train = train[train["source"] != "dealornodeal"]
        validation = validation[validation["source"] != "dealornodeal"]
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
    if cfg.resume_from and cfg.init_from:
        raise ValueError("resume_from and init_from exclude each other: resume a run, or start from an adapter")
    resumed = resume_state(cfg.resume_from) if cfg.resume_from else None  # a changed adapter fails here, early
    init = start_weights(cfg.init_from) if cfg.init_from else None
    if init is not None and cfg.init_digest and init["digest"] != cfg.init_digest:
        from agreemate_lib.training.shipping import AdapterDigestError

        raise AdapterDigestError(f"init_from {init['folder']} holds adapter {init['digest']}, but this run starts from "
                                 f"{cfg.init_digest}: the starting adapter was replaced")
    tok, model, quant, note = load_base(cfg, device)
    if note:
        log(note)
    if quant == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                             target_modules=cfg.modules(), task_type="CAUSAL_LM"))
    warm = resumed or init
    start_state = {k: v.to(torch.float32) for k, v in warm["weights"].items()} if warm else None
    if warm:
        set_peft_model_state_dict(model, start_state)
    if resumed:
        log(f"resuming {resumed['folder']} (digest {resumed['digest']}): {resumed['steps']} steps, "
            f"{resumed['examples_seen']} examples seen")
    elif init:
        log(f"starting from the adapter in {init['folder']} (digest {init['digest']})")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    autocast, use_bf16 = autocast_factory(cfg.mixed_precision, device)

    tr = train.sample(frac=1.0, random_state=cfg.seed)
    if cfg.train_examples:
        tr = tr.head(cfg.train_examples)
    train_ex, skipped = encode_dialogues(tok, tr, cfg.max_length)
    val_all, vskipped = encode_dialogues(tok, validation.sample(frac=1.0, random_state=cfg.seed), cfg.max_length)
    if cfg.final_eval_dialogues:
        val_all = val_all[: cfg.final_eval_dialogues]
    val_ex = val_all[: cfg.val_examples]
    if not train_ex or not val_ex:
        raise ValueError(f"no usable examples (train {len(train_ex)}, validation {len(val_ex)}; "
                         f"{skipped + vskipped} longer than max_length={cfg.max_length} or without a target)")
    if resumed and resumed["train_dialogues"] != len(train_ex):
        raise ValueError(f"resume_from {resumed['folder']}: it trained on {resumed['train_dialogues']} dialogues, "
                         f"this data gives {len(train_ex)}; its place in the data order would not carry over")
    with model.disable_adapter():
        base_losses = sequence_losses(model, val_ex, device, autocast)
    base_val = mean_loss(base_losses)
    start_val = mean_loss(sequence_losses(model, val_ex, device, autocast)) if warm else base_val
    if warm:
        log(f"the starting adapter's validation loss: {start_val:.4f}")
    log(f"base model validation loss {base_val:.4f} on {len(val_ex)} dialogues; {len(train_ex)} training dialogues, "
        f"{sum(sum(x != -100 for x in e['labels']) for e in train_ex)} target tokens")

    groups = layer_param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
    base_lrs = [g["lr"] for g in groups]
    offset = resumed["steps"] if resumed else 0
    curves, ema, tokens_seen = [], None, resumed["tokens"] if resumed else 0
    cursor = resumed["examples_seen"] if resumed else 0
    # a resumed or initialized run keeps its starting weights when no step beats them
    best = BestSoFar(start_val, offset - 1, start_state)
    stop_reason = "max_steps"
    model.train()
    for step in range(offset, cfg.max_steps):
        mult = lr_multiplier(step, cfg)
        if resumed and step - offset < cfg.warmup_steps:  # fresh optimizer moments: warm up again
            mult *= (step - offset + 1) / cfg.warmup_steps
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * mult
        t0 = time.perf_counter()
        losses, step_tokens = [], 0
        for _ in range(cfg.grad_accum):
            chunk = [train_ex[(cursor + j) % len(train_ex)] for j in range(cfg.micro_batch)]
            cursor += cfg.micro_batch
            with autocast():
                parts = [example_loss(model, e, device) for e in chunk]
                loss = sum(p for p, _ in parts) / max(1, sum(n for _, n in parts))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at step {step}: {loss.item()}")
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
            step_tokens += sum(len(e["input_ids"]) for e in chunk)
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]],
                                                         cfg.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tokens_seen += step_tokens
        raw = sum(losses) / len(losses)
        ema = ema_update(ema, raw, cfg.ema_alpha)
        row = {"step": step, "loss": raw, "loss_ema": ema, "grad_norm": grad_norm, "tokens_per_s": step_tokens / dt,
               "step_s": dt, "lr_multiplier": mult, "epoch": cursor / len(train_ex),
               "validation_loss": float("nan")}
        row |= {f"lr_layer_{g['layer']}": g["lr"] for g in opt.param_groups}
        last = step + 1 == cfg.max_steps
        over_time = cfg.max_minutes and (time.perf_counter() - t_start) / 60 > cfg.max_minutes
        if (step + 1) % cfg.eval_every == 0 or last or over_time:
            v = mean_loss(sequence_losses(model, val_ex, device, autocast))
            row["validation_loss"] = v
            best.offer(v, step, model)
            log(f"step {step + 1}: validation loss {v:.4f} (best {best.value:.4f} at step {best.step + 1})")
        curves.append(row)
        log(f"step {step + 1}/{cfg.max_steps} loss {raw:.4f} ema {ema:.4f} lr x{mult:.2f} |g| {grad_norm:.2f} "
            f"{step_tokens / dt:.0f} tok/s epoch {cursor / len(train_ex):.2f}")
        if reason := best.stop_reason(cfg.patience, over_time, cfg.max_minutes, "validation"):
            stop_reason = reason
            break
    if best.state is not None:
        set_peft_model_state_dict(model, best.state)
    log(f"stopped: {stop_reason}; keeping step {best.step + 1}; final held-out evaluation on {len(val_all)} "
        "dialogues")
    tuned_all = sequence_losses(model, val_all, device, autocast)
    with model.disable_adapter():
        base_all = sequence_losses(model, val_all, device, autocast)
    ppl = perplexity_reduction(base_all, tuned_all, seed=cfg.seed)
    out = Path(out_dir)
    save_adapter(model, out)
    curves_df = pd.DataFrame(curves)
    if resumed and len(resumed["curves"]):
        curves_df = pd.concat([resumed["curves"], curves_df], ignore_index=True)
    curves_df.to_parquet(out / "curves.parquet", index=False)
    metrics = {
        "steps": offset + len(curves), "best_step": best.step + 1, "stop_reason": stop_reason,
        "tokens": tokens_seen, "examples_seen": cursor, "epochs": cursor / len(train_ex),
        "train_dialogues": len(train_ex), "skipped": skipped,
        "validation_dialogues": len(val_all), "trainable_parameters": trainable,
        "train_loss_first": float(curves_df["loss"].iloc[0]), "train_loss_final": float(curves_df["loss"].iloc[-1]),
        "train_loss_ema_final": ema, "validation_loss": mean_loss(tuned_all),
        "base_validation_loss": mean_loss(base_all), "validation_perplexity": ppl["perplexity"],
        "base_validation_perplexity": ppl["base_perplexity"], "perplexity_reduction": ppl["perplexity_reduction"],
        "perplexity_reduction_ci_low": ppl["perplexity_reduction_ci_low"],
        "perplexity_reduction_ci_high": ppl["perplexity_reduction_ci_high"],
        "wall_s": time.perf_counter() - t_start + (resumed["wall_s"] if resumed else 0.0),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "quantization": quant, "quantization_note": note, "mixed_precision": "bf16" if use_bf16 else "fp32",
        "device": device,
    }
    if resumed:
        metrics |= {"resumed_from_digest": resumed["digest"], "resumed_at_step": offset,
                    "resumed_validation_loss": start_val}
    if init:
        metrics |= {"initialized_from_digest": init["digest"], "initial_validation_loss": start_val}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "training_config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    return metrics
