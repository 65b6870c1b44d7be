"""Training the value-extraction tagger on span-annotated rows (components.catalog.spans.SpanRow).

    model = train_extractor(ExtractionTrainConfig(), train_rows)
    save_model(model, out_dir)

    result = train_extraction(load_extraction_config(path), dataset, out_dir)   # `attrflow train`

`train_extraction` trains on a catalog dataset: its attribute columns' values located in the
titles (distant labels), frozen encoders' outputs from the embedding cache where the config
freezes them, per-attribute publishing thresholds fitted on validation (the lowest span score
that keeps 95% of published values right), all saved in the model folder; with
`training.seeds`, one model per seed saved as their ensemble.

Fine-tunes the text encoder with AdamW (one learning rate for the encoder, another for the
heads), linear warmup then linear decay, gradient clipping. Batches group titles of similar
length (less padding: most of a CPU step's cost), in a seeded random order.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.catalog.dataset import Dataset
from components.catalog.spans import SpanRow, dataset_rows, fully_located, surface_forms, word_aligned_attributes
from components.evaluation.extraction import score_rows
from components.evaluation.extraction_metrics import value_thresholds
from components.inference.extraction import dataset_features, split_features
from components.models.encoders import TextEncoder
from components.models.heads import Vocab
from components.models.model import create_model
from components.models.tagger import (
    ATTRIBUTES,
    ExtractionConfig,
    ExtractionEnsemble,
    ExtractionModel,
    cached_inputs,
    token_edges,
)
from components.yaml_files import describe_errors, read_yaml_mapping


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
    # On a catalog dataset (`attrflow train`): one model per seed, saved as their ensemble (mean
    # tag probabilities; docs/results.md, value extraction items 9-11); None: one model, `seed`.
    seeds: list[int] | None = Field(None, min_length=1)


class ExtractionTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ExtractionConfig = ExtractionConfig()
    training: ExtractionTrainingConfig = ExtractionTrainingConfig()
    # On a catalog dataset: the attribute columns whose values are extracted from the title
    # (None: every multiclass attribute); the precision that publishing thresholds keep.
    attributes: list[str] | None = None
    target_precision: float = Field(0.95, gt=0, le=1)


def load_extraction_config(path: str | Path) -> ExtractionTrainConfig:
    path = Path(path)
    raw = read_yaml_mapping(path, "extraction training config", empty_ok=True)
    try:
        return ExtractionTrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ValueError(f"{path}: invalid extraction training config: {describe_errors(e)}") from None


def is_extraction_config(path: str | Path) -> bool:
    """Whether a training config file describes an extraction model (`model: {task: extraction}`)."""
    model = read_yaml_mapping(Path(path), "training config", empty_ok=True).get("model") or {}
    return isinstance(model, dict) and model.get("task") == "extraction"


@dataclass
class ExtractionResult:
    model_dir: Path
    validation: dict[str, Any]  # components.evaluation.extraction_metrics.extraction_report
    thresholds: dict[str, float | None]  # attribute -> lowest span score to publish (None: never)
    seconds: float


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


# --- on a catalog dataset (`attrflow train` with `model: {task: extraction}`) ---------------------


def extraction_attributes(config: ExtractionTrainConfig, dataset: Dataset) -> list[str]:
    """The attributes extracted: the config's, else a value-extraction catalog's named attributes
    (its manifest's `values`), else every multiclass attribute column (distant labels)."""
    known = list(dataset.manifest.get("values") or dataset.vocab)
    attrs = config.attributes or (
        known if "values" in dataset.manifest else [a for a, v in dataset.vocab.items() if v.kind == "multiclass"]
    )
    unknown = sorted(set(attrs) - set(known))
    if unknown:
        raise ValueError(f"attributes {unknown} are not in dataset {dataset.name} (it has {known})")
    return attrs


def train_extraction(
    config: ExtractionTrainConfig, dataset: Dataset, out_dir: str | Path, log: Callable[[str], None] | None = None
) -> ExtractionResult:
    from components.models.io import THRESHOLDS, save_extraction_ensemble, save_model

    t0 = time.perf_counter()
    attrs = extraction_attributes(config, dataset)
    features = dataset_features(config.model, dataset)
    if features is not None and "text_tokens" in features and config.model.category_input:
        raise ValueError("a model on the embedding cache reads the title alone: set model.category_input: false")
    tokenizer = TextEncoder(config.model.text).tokenizer
    edges = lambda text: token_edges(tokenizer, text)  # noqa: E731  (spans end where tokens do)
    rows = {s: dataset_rows(dataset.split(s), attrs, edges) for s in ("train", "validation")}
    rows["train"] = fully_located(rows["train"])
    if not any(r.spans for r in rows["train"]):
        raise ValueError(f"no value of {attrs} is written in any train title of {dataset.name}: nothing to learn")
    train_features = split_features(features, dataset, "train")
    seeds = config.training.seeds or [config.training.seed]
    members = [
        train_extractor(
            config.model_copy(update={"training": config.training.model_copy(update={"seed": seed})}),
            rows["train"],
            attrs,
            (lambda m, seed=seed: log(f"seed {seed} {m}")) if log and len(seeds) > 1 else log,
            train_features,
        )
        for seed in seeds
    ]
    model = members[0] if len(members) == 1 else ExtractionEnsemble(members)
    val = score_rows(model, rows["validation"], split_features(features, dataset, "validation"))
    expected = [r.values for r in rows["validation"]]
    thresholds = value_thresholds(expected, val["predicted"], val["confidence"], config.target_precision)
    seconds = time.perf_counter() - t0
    extra = {"train_seconds": seconds, "attributes": attrs}
    if isinstance(model, ExtractionEnsemble):
        out = save_extraction_ensemble(model, Path(out_dir), [f"seed{seed}" for seed in seeds], extra)
    else:
        out = save_model(model, Path(out_dir), extra=extra)
    (out / THRESHOLDS).write_text(json.dumps(thresholds, indent=1))
    (out / "validation.json").write_text(json.dumps(val["report"], indent=1))
    return ExtractionResult(out, val["report"], thresholds, seconds)
