"""LoRA fine-tuning of a role adapter, the paper's recipe done for real.

- peft LoRA (default r=32, alpha=16, dropout 0.05 on q/k/v/o; MLP projections on request), loss on the target turn
  only (prompt tokens are masked with -100);
- a cyclic learning rate: cosine decay to ``min_lr_ratio`` with a restart every ``cycle_steps`` (visible in the
  curves), after a short linear warm-up;
- layer-wise learning-rate decay: layer i of L gets ``lr * layer_decay ** (L - 1 - i)`` (lower layers smaller);
- gradient checkpointing, gradient accumulation to an effective batch, bf16 autocast where the hardware has it;
- 4-bit nf4 quantisation of the base (QLoRA) through bitsandbytes: CUDA, or its CPU backend where it works; a clear
  message and a bf16/fp32 fallback otherwise;
- an EMA of the training loss initialised at the first loss (not at 0), reported beside the raw loss; seeded.

Saved as a peft adapter (``adapter_model.safetensors`` + ``adapter_config.json``) with ``training_config.json``,
``metrics.json`` and ``curves.parquet``.
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
    """Every training setting, in one place (the Dagster asset's run config is this class). Defaults: CPU-sized;
    ``preset: full`` selects the paper-scale GPU settings of :meth:`full`."""

    model_config = ConfigDict(frozen=True)

    preset: Literal["default", "full"] = "default"
    model: str = "smollm2"
    r: int = 32
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    include_mlp: bool = False
    lr: float = 3e-4
    layer_decay: float = 0.9
    min_lr_ratio: float = 0.1
    warmup_steps: int = 2
    cycle_steps: int = 8
    max_steps: int = 24
    micro_batch: int = 2
    grad_accum: int = 2
    max_length: int = 1024
    val_examples: int = 24
    ema_alpha: float = 0.9
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    mixed_precision: str = "auto"  # auto | bf16 | none
    quantization: str = "auto"  # auto (nf4 where bitsandbytes works) | nf4 | none
    seed: int = 0
    train_examples: int = 0  # 0: all

    @classmethod
    def full(cls) -> LoraTrainConfig:
        """Paper-scale settings for a GPU (3B base, all examples, longer schedule)."""
        return cls(preset="full", model="meta-llama/Llama-3.2-3B-Instruct", max_steps=1500, micro_batch=8,
                   grad_accum=4, max_length=2048, val_examples=512, cycle_steps=300, warmup_steps=50, lr=2e-4)

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


def encode_examples(tok, frame: pd.DataFrame, max_length: int) -> tuple[list[dict], int]:
    """Token ids and labels (-100 on the prompt): the loss is on the target turn only. Over-long examples are
    skipped (cutting the context would teach the wrong thing); returns (examples, skipped)."""
    out, skipped = [], 0
    for r in frame.itertuples(index=False):
        msgs = json.loads(r.messages)
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        t_ids = tok(r.target + tok.eos_token, add_special_tokens=False)["input_ids"]
        if len(p_ids) + len(t_ids) > max_length:
            skipped += 1
            continue
        out.append({"input_ids": p_ids + t_ids, "labels": [-100] * len(p_ids) + t_ids})
    return out, skipped


def _batch(examples: list[dict], pad_id: int, device: str):
    import torch

    n = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, e in enumerate(examples):
        L = len(e["input_ids"])
        ids[i, :L] = torch.tensor(e["input_ids"])
        labels[i, :L] = torch.tensor(e["labels"])
        mask[i, :L] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def _eval_loss(model, examples: list[dict], pad_id: int, device: str, autocast, micro_batch: int) -> float:
    """Mean token-level loss over the target tokens of ``examples``."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(examples), micro_batch):
            ids, labels, mask = _batch(examples[i : i + micro_batch], pad_id, device)
            with autocast():
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                   labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
            total += lp.item()
            count += int((labels[:, 1:] != -100).sum())
    model.train()
    return total / max(1, count)


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


def train_lora(train: pd.DataFrame, validation: pd.DataFrame, out_dir: str | Path,
               cfg: LoraTrainConfig = LoraTrainConfig(), device: str = "auto", log=print) -> dict:
    """Train one adapter; returns its metrics (also written to ``out_dir/metrics.json``)."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    t_start = time.perf_counter()
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
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    from agreemate_lib.backends.models import bf16_supported

    use_bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and bf16_supported(device))

    def autocast():
        if use_bf16:
            return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    tr = train.sample(frac=1.0, random_state=cfg.seed)
    if cfg.train_examples:
        tr = tr.head(cfg.train_examples)
    train_ex, skipped = encode_examples(tok, tr, cfg.max_length)
    val_ex, vskipped = encode_examples(tok, validation.sample(frac=1.0, random_state=cfg.seed)
                                       .head(cfg.val_examples * 2), cfg.max_length)
    val_ex = val_ex[: cfg.val_examples]
    if not train_ex or not val_ex:
        raise ValueError(f"no usable examples (train {len(train_ex)}, validation {len(val_ex)}; "
                         f"{skipped + vskipped} longer than max_length={cfg.max_length})")
    pad = tok.pad_token_id
    with model.disable_adapter():
        base_val = _eval_loss(model, val_ex, pad, device, autocast, cfg.micro_batch)
    log(f"base model validation loss {base_val:.4f} on {len(val_ex)} examples")

    groups = layer_param_groups(model, cfg)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.0)
    base_lrs = [g["lr"] for g in groups]
    curves, ema, cursor, tokens_seen = [], None, 0, 0
    model.train()
    for step in range(cfg.max_steps):
        mult = lr_multiplier(step, cfg)
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * mult
        t0 = time.perf_counter()
        losses, step_tokens = [], 0
        for _ in range(cfg.grad_accum):
            chunk = [train_ex[(cursor + j) % len(train_ex)] for j in range(cfg.micro_batch)]
            cursor += cfg.micro_batch
            ids, labels, mask = _batch(chunk, pad, device)
            with autocast():
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss at step {step}: {loss.item()}")
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
            step_tokens += int(mask.sum())
        grad_norm = float(torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]],
                                                         cfg.max_grad_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tokens_seen += step_tokens
        raw = sum(losses) / len(losses)
        ema = ema_update(ema, raw, cfg.ema_alpha)
        row = {"step": step, "loss": raw, "loss_ema": ema, "grad_norm": grad_norm, "tokens_per_s": step_tokens / dt,
               "step_s": dt, "lr_multiplier": mult}
        row |= {f"lr_layer_{g['layer']}": g["lr"] for g in opt.param_groups}
        curves.append(row)
        log(f"step {step + 1}/{cfg.max_steps} loss {raw:.4f} ema {ema:.4f} lr x{mult:.2f} |g| {grad_norm:.2f} "
            f"{step_tokens / dt:.0f} tok/s")
    val = _eval_loss(model, val_ex, pad, device, autocast, cfg.micro_batch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    curves_df = pd.DataFrame(curves)
    curves_df["validation_loss"] = float("nan")
    curves_df.loc[curves_df.index[-1], "validation_loss"] = val
    curves_df.to_parquet(out / "curves.parquet", index=False)
    metrics = {
        "steps": cfg.max_steps, "tokens": tokens_seen, "train_examples": len(train_ex),
        "skipped_too_long": skipped, "validation_examples": len(val_ex), "trainable_parameters": trainable,
        "train_loss_first": curves[0]["loss"], "train_loss_final": curves[-1]["loss"],
        "train_loss_ema_final": ema, "validation_loss": val, "validation_perplexity": math.exp(val),
        "base_validation_loss": base_val, "base_validation_perplexity": math.exp(base_val),
        "wall_s": time.perf_counter() - t_start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "quantization": quant, "quantization_note": note, "mixed_precision": "bf16" if use_bf16 else "fp32",
        "device": device,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out / "training_config.json").write_text(json.dumps(cfg.model_dump(), indent=2))
    return metrics
