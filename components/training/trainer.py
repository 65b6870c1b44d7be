"""Training: AdamW with per-part learning rates, warmup + cosine, clipping, early stopping,
per-epoch checkpoints that resume exactly, and a frozen-encoder mode on cached embeddings.

    result = train(load_train_config("configs/models/modality_attention.yaml"), load_dataset(path), out_dir)
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from components.catalog.dataset import Dataset
from components.evaluation.metrics import attribute_metrics, value_thresholds
from components.features.cache import Encodings, cached_encodings
from components.features.preprocess import collate_fn, encode_labels, records
from components.inference.predict import predict_items
from components.models.io import CONFIG, WEIGHTS, load_meta, save_model
from components.models.model import AttributeModel, ModelConfig, Vocab, create_model

# TrainConfig and friends live in config.py (the linear fit shares them); importable from here too.
from components.training.config import TrainConfig, TrainingConfig, TrainResult, _deep_update, load_train_config
from components.training.linear import train_tfidf_lr
from components.training.losses import log_class_priors, supervised_loss

EpochCallback = Callable[[int, dict[str, Any]], None]


def train(
    config: TrainConfig,
    dataset: Dataset,
    out_dir: str | Path,
    resume: bool = False,
    on_epoch_end: EpochCallback | None = None,
    device: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train and save the best model (by the monitored validation metric) into `out_dir`."""
    if config.model.fusion.name == "tfidf_lr":  # a linear model: fitted by scikit-learn, no epochs
        return train_tfidf_lr(config, dataset, out_dir)
    cfg = config.training
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoint"
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    _seed_everything(cfg.seed)

    vocab = {name: Vocab(kind=v.kind, values=v.values) for name, v in dataset.vocab.items()}
    model = create_model(config.model, vocab).to(device)
    labels = encode_labels(dataset.items, model.vocab)
    train_idx = np.flatnonzero(dataset.items["split"].to_numpy() == "train")
    val_idx = np.flatnonzero(dataset.items["split"].to_numpy() == "validation")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{dataset.path}: training needs rows in both the train and validation splits")

    log_priors = None
    if cfg.logit_adjust_tau > 0:
        log_priors = {
            s.name: log_class_priors(labels[s.name][train_idx], s.n_values, cfg.logit_adjust_tau).to(device)
            for s in model.specs
            if s.kind == "multiclass"
        }
    encodings: Encodings | None = None
    if cfg.frozen:
        for p in [*model.text_encoder.parameters(), *model.image_encoder.parameters()]:
            p.requires_grad_(False)
        encodings = cached_encodings(
            dataset, model.text_encoder, model.image_encoder, model.needs_tokens, device=device, progress=progress
        )
    if cfg.init_from is not None:
        _init_from(model, config.model, Path(cfg.init_from))
    optimizer = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total_steps = min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    scheduler = _warmup_cosine(optimizer, cfg.warmup_share, total_steps)
    # Re-seed after setup: encoding the cache on a miss consumes random numbers (DataLoader
    # seeds), and a run must not depend on whether the cache was warm.
    torch.manual_seed(cfg.seed)
    state = {"epoch": 0, "best": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume and (ckpt_dir / "state.json").is_file():
        state = _load_checkpoint(ckpt_dir, model, optimizer, scheduler)
    elif resume:
        print(f"no checkpoint in {ckpt_dir}; starting from scratch")
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    started = time.perf_counter()
    for epoch in range(state["epoch"], cfg.epochs):
        if state["bad_epochs"] >= cfg.patience or scheduler.last_epoch >= total_steps:
            break
        if cfg.max_seconds is not None and state["history"] and time.perf_counter() - started > cfg.max_seconds:
            break
        model.train()
        if cfg.frozen:  # frozen encoders stay in eval mode (no dropout, fixed batch-norm statistics)
            model.text_encoder.eval()
            model.image_encoder.eval()
        order = train_idx[
            torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).numpy()
        ]
        drop = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 1) if cfg.image_dropout > 0 else None
        batches = _batches(model, dataset, encodings, order, cfg, device, drop)
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not progress,
            mininterval=1.0,
        )
        seen, loss_sum, start = 0, 0.0, time.perf_counter()
        for batch_idx, forward in bar:
            if scheduler.last_epoch >= total_steps:  # the step budget is spent
                break
            with amp:
                out = forward()
            y = {k: v[batch_idx].to(device) for k, v in labels.items()}
            loss = supervised_loss(out, y, model.specs, cfg.label_smoothing, log_priors) + out.aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            seen += len(batch_idx)
            loss_sum += loss.item() * len(batch_idx)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", items_s=f"{seen / (time.perf_counter() - start):.0f}")
        elapsed = time.perf_counter() - start
        val = evaluate_arrays(model, dataset, encodings, val_idx, labels, cfg.target_precision)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "items_per_second": seen / elapsed,
            "validation": {k: float(np.mean([m[k] for m in val.values()])) for k in ("f1_macro", "r_at_p95")},
        }
        score = record["validation"][cfg.monitor]
        state["history"].append(record)
        if score > state["best"]:
            state.update(best=score, best_epoch=epoch + 1, bad_epochs=0)
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            save_file(_trainable_state(model, cfg.frozen), str(ckpt_dir / "best.safetensors"))
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        _save_checkpoint(ckpt_dir, model, optimizer, scheduler, state, cfg.frozen)
        if progress:
            print(
                f"epoch {epoch + 1}: loss {record['train_loss']:.4f}  val {cfg.monitor} {record['validation'][cfg.monitor]:.4f}  "
                f"{record['items_per_second']:.0f} items/s"
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)

    # The best epoch's weights, its validation metrics and the publishing thresholds.
    _load_trainable(model, ckpt_dir / "best.safetensors")
    pred = predict_items(model, dataset.items.iloc[val_idx] if encodings is None else None, encodings, val_idx)
    thresholds, validation = {}, {}
    for spec in model.specs:
        y = labels[spec.name][val_idx].numpy()
        thresholds[spec.name] = value_thresholds(pred.probs[spec.name], y, spec.kind, cfg.target_precision)
        validation[spec.name] = attribute_metrics(pred.probs[spec.name], y, spec.kind, cfg.target_precision)
    speed = float(np.mean([h["items_per_second"] for h in state["history"]])) if state["history"] else 0.0
    save_model(
        model,
        out_dir,
        thresholds,
        include_encoders=not cfg.frozen,
        extra={
            "training": config.training.model_dump(mode="json"),
            "dataset": {"name": dataset.name, "version": dataset.version, "path": str(dataset.path)},
            "best_epoch": state["best_epoch"],
            "target_precision": cfg.target_precision,
        },
    )
    (out_dir / "history.json").write_text(json.dumps(state["history"], indent=1))
    (out_dir / "validation_metrics.json").write_text(json.dumps(validation, indent=1))
    return TrainResult(out_dir, state["best_epoch"], state["epoch"], validation, state["history"], speed, pred.probs)


def evaluate_arrays(
    model: AttributeModel, dataset: Dataset, encodings: Encodings | None, idx: np.ndarray, labels: dict, target: float
) -> dict[str, dict[str, Any]]:
    pred = predict_items(model, dataset.items.iloc[idx] if encodings is None else None, encodings, idx)
    return {
        s.name: attribute_metrics(pred.probs[s.name], labels[s.name][idx].numpy(), s.kind, target) for s in model.specs
    }


def _drop_images(has_image: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """has_image with each True turned False with probability p (modality dropout)."""
    if generator is None or p <= 0:
        return has_image
    keep = torch.rand(len(has_image), generator=generator) >= p
    return has_image & keep.to(has_image.device)


def _batches(model, dataset, encodings, order, cfg: TrainingConfig, device, drop: torch.Generator | None = None):
    """Yield (row indices, a thunk running the forward pass) for each batch of `order`."""
    if encodings is not None:
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.as_tensor(order[i : i + cfg.batch_size])
            f = encodings.features(idx, device)
            if drop is not None:
                f.has_image = _drop_images(f.has_image, cfg.image_dropout, drop)
                f.image = f.image * f.has_image[:, None]
                if f.image_tokens is not None:
                    f.image_tokens = f.image_tokens * f.has_image[:, None, None]
            yield idx, (lambda f=f: model.forward_head(f))
        return
    rows = records(dataset.items)
    loader = DataLoader(
        [rows[i] for i in order],
        batch_size=cfg.batch_size,
        collate_fn=collate_fn(model.text_encoder, model.image_encoder),
        num_workers=cfg.num_workers,
    )
    for batch in loader:
        idx = batch.pop("index")
        batch["has_image"] = _drop_images(batch["has_image"], cfg.image_dropout, drop)
        batch = {k: v.to(device) for k, v in batch.items()}
        yield idx, (lambda batch=batch: model(batch))


def _init_from(model: AttributeModel, config: ModelConfig, source: Path) -> None:
    """Start from a trained model folder's weights: fusion, heads, lexical channel (and encoders when it has them)."""
    meta = load_meta(source) if (source / CONFIG).is_file() else {}
    if "model" not in meta:
        raise ValueError(f"init_from: {source} is not a saved attrflow model")
    if ModelConfig.model_validate(meta["model"]) != config:
        raise ValueError(f"init_from: {source} was trained with another model config; it must be this run's")
    _load_trainable(model, source / WEIGHTS)  # with its encoders, if it stored them


def _optimizer(model: AttributeModel, cfg: TrainingConfig) -> torch.optim.Optimizer:
    text, image, rest = model.encoder_parameters()
    groups = [{"params": rest, "lr": cfg.lr_head}]
    if not cfg.frozen:
        groups += [{"params": text, "lr": cfg.lr_text}, {"params": image, "lr": cfg.lr_image}]
    # The fused kernel updates each tensor in one pass over memory instead of ~10: on a CPU it
    # makes frozen-encoder epochs ~30% faster (the 8M-weight lexical table dominates the update).
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused)


def _warmup_cosine(optimizer, warmup_share: float, total_steps: int):
    warmup = max(1, int(warmup_share * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every generator a training step draws from: Python's, NumPy's, torch's CPU and CUDA ones.
    Plain tensors and tuples only, so `torch.load(..., weights_only=True)` reads it."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    # A CUDA checkpoint resumed on a CPU has no CUDA generators to restore (and needs none);
    # on a machine with another GPU count, the ones both have are restored.
    if state["cuda"] and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def _trainable_state(model: AttributeModel, frozen: bool) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if frozen:
        state = {k: v for k, v in state.items() if not k.startswith(("text_encoder.", "image_encoder."))}
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _load_trainable(model: AttributeModel, path: Path) -> None:
    """Load weights saved by `_trainable_state`; frozen encoders may be absent, nothing else may
    (a checkpoint from another model config must not leave parts at their random init)."""
    hint = "train without --resume, or with the config the checkpoint was made with"
    try:
        missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    except RuntimeError as e:  # shapes differ
        raise ValueError(
            f"{path} does not match this model config ({str(e).strip().splitlines()[-1].strip()}); {hint}"
        ) from None
    missing = [k for k in missing if not k.startswith(("text_encoder.", "image_encoder."))]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match this model config (missing {missing[:5]}, unexpected {unexpected[:5]}); {hint}"
        )


def _save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, state: dict, frozen: bool) -> None:
    """Weights (safetensors), optimizer + scheduler + RNG state, then state.json last: a
    checkpoint counts only once state.json names its epoch."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    save_file(_trainable_state(model, frozen), str(ckpt_dir / "last.safetensors"))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        ckpt_dir / "optimizer.pt",
    )
    tmp = ckpt_dir / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(ckpt_dir / "state.json")


def _load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler) -> dict:
    """Resume on any device: tensors load onto the CPU, and the optimizer moves its state onto
    the parameters' device (a GPU checkpoint resumes on a CPU and the other way round)."""
    _load_trainable(model, ckpt_dir / "last.safetensors")
    extra = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    set_rng_state(extra["rng"])
    state = json.loads((ckpt_dir / "state.json").read_text())
    print(f"resuming from {ckpt_dir} after epoch {state['epoch']}")
    return state


__all__ = ["TrainConfig", "TrainResult", "TrainingConfig", "_deep_update", "load_train_config", "train"]
