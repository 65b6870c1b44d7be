"""Training the value-extraction tagger on span-annotated rows (components.catalog.spans.SpanRow).

    model = train_extractor(ExtractionTrainConfig(), train_rows)
    save_model(model, out_dir)

Fine-tunes the text encoder with AdamW (one learning rate for the encoder, another for the
heads), linear warmup then linear decay, gradient clipping. Batches group titles of similar
length (less padding: most of a CPU step's cost), in a seeded random order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from components.catalog.spans import SpanRow, surface_forms, word_aligned_attributes
from components.models.heads import Vocab
from components.models.model import create_model
from components.models.tagger import ATTRIBUTES, ExtractionConfig, ExtractionModel, cached_inputs


class ExtractionTrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    lr_text: float = Field(5e-5, ge=0)
    lr_head: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_share: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # a budget in optimizer steps (tests, CPU)
    # Keep the embeddings and this many of the encoder's lowest layers fixed (BERT-family
    # encoders): no backward pass through them, about a third less CPU time per step at 3 of 6.
    freeze_layers: int = Field(0, ge=0)
    seed: int = 0


class ExtractionTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ExtractionConfig = ExtractionConfig()
    training: ExtractionTrainingConfig = ExtractionTrainingConfig()


def attribute_list(rows: list[SpanRow]) -> list[str]:
    """Every attribute the rows name, sorted: the model's tag layers."""
    return sorted({a for r in rows for a in r.values})


def _length_batches(model: ExtractionModel, rows: list[SpanRow], size: int, rng: random.Random) -> list[list[int]]:
    lengths = [len(model.text_encoder.tokenizer.tokenize(r.text)) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(batches)
    return batches


def _freeze_bottom(model: ExtractionModel, n_layers: int) -> None:
    if n_layers == 0:
        return
    bert = model.text_encoder.model
    if not (hasattr(bert, "embeddings") and hasattr(bert, "encoder") and hasattr(bert.encoder, "layer")):
        raise ValueError("freeze_layers needs a BERT-family text encoder (embeddings + encoder.layer)")
    for module in [bert.embeddings, *bert.encoder.layer[:n_layers]]:
        module.requires_grad_(False)


def train_extractor(
    config: ExtractionTrainConfig,
    rows: list[SpanRow],
    attributes: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    features: dict[str, torch.Tensor] | None = None,
) -> ExtractionModel:
    """`features`: the frozen encoders' outputs for `rows`, in their order (the embedding cache:
    components.features.cache; needs `frozen_text` when it holds token vectors)."""
    cfg = config.training
    if features is not None and "text_tokens" in features and not config.model.frozen_text:
        raise ValueError("cached token vectors are for a frozen text encoder: set model.frozen_text: true")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    attrs = attributes or attribute_list(rows)
    model = create_model(config.model, {ATTRIBUTES: Vocab(kind="span", values=attrs)})
    assert isinstance(model, ExtractionModel)
    model.surface_forms = surface_forms(rows)
    model.word_aligned = word_aligned_attributes(rows)
    _freeze_bottom(model, cfg.freeze_layers)
    enc = [p for p in model.text_encoder.parameters() if p.requires_grad]
    in_encoder = {id(p) for p in model.text_encoder.parameters()}
    head = [p for p in model.parameters() if id(p) not in in_encoder and p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": enc, "lr": cfg.lr_text}, {"params": head, "lr": cfg.lr_head}], weight_decay=cfg.weight_decay
    )
    per_epoch = -(-len(rows) // cfg.batch_size)
    total = min(cfg.epochs * per_epoch, cfg.max_steps or 10**12)
    warm = max(1, int(cfg.warmup_share * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    model.train()
    step, t0 = 0, time.time()
    for epoch in range(cfg.epochs):
        sums: dict[str, float] = {}
        for idx in _length_batches(model, rows, cfg.batch_size, rng):
            if step >= total:
                break
            batch_rows = [rows[i] for i in idx]
            batch = model.tokenize([r.text for r in batch_rows], [r.category for r in batch_rows])
            if features is not None:
                batch.update(cached_inputs(features, torch.tensor(idx), batch["input_ids"].shape[1]))
            loss, parts = model.loss(model(batch), model.labels(batch_rows, batch))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        if log:
            n = max(1, per_epoch)
            log(
                f"epoch {epoch + 1}: "
                + " ".join(f"{k} {v / n:.4f}" for k, v in sums.items())
                + f" ({time.time() - t0:.0f} s)"
            )
        if step >= total:
            break
    return model.eval()
