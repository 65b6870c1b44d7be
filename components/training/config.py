"""The training configuration (`TrainConfig`: model + training settings, read from YAML) and
what a training run returns (`TrainResult`), shared by the trainer and the linear fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.models.model import ModelConfig
from components.yaml_files import describe_errors, read_yaml_mapping


class TrainingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    frozen: bool = True  # train fusion + heads on cached encoder outputs
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr_head: float = Field(1e-3, gt=0)  # fusion and heads
    lr_text: float = Field(2e-5, ge=0)  # text encoder (fine-tuning only)
    lr_image: float = Field(1e-4, ge=0)  # image encoder (fine-tuning only)
    weight_decay: float = Field(0.01, ge=0)
    warmup_share: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(5, ge=1)  # epochs without improvement before stopping
    monitor: Literal["f1_macro", "r_at_p95"] = "f1_macro"  # mean over attributes, on validation
    target_precision: float = Field(0.95, gt=0, le=1)  # for the per-value publishing thresholds
    seed: int = 0
    num_workers: int = Field(0, ge=0)  # DataLoader workers when fine-tuning
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # multiclass cross-entropy label smoothing
    # Logit-adjusted loss for rare values (multiclass): the loss sees logits + tau * log prior
    # (train-split frequencies); 0 = plain cross-entropy.
    logit_adjust_tau: float = Field(0.0, ge=0)
    # Modality dropout: during training, treat each product's image as missing with this
    # probability (the fusions' missing-image path), so a model cannot lean on memorised image
    # features alone and keeps using the text. 0 = off.
    image_dropout: float = Field(0.0, ge=0, lt=1)
    # A budget in optimizer steps (the schedule spans them; the last epoch may end early), for
    # fine-tuning on a CPU. None = every epoch in full.
    max_steps: int | None = Field(None, ge=1)
    # A budget in seconds: no epoch starts once it is spent (the first always runs). None = no limit.
    max_seconds: float | None = Field(None, gt=0)
    # Start the fusion, heads and lexical channel from a trained model folder with the same
    # model config (its encoders may be frozen ones): "linear probing, then fine-tuning"
    # (Kumar et al., 2022) when this run fine-tunes the encoders. None = random init.
    init_from: Path | None = None


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()


def load_train_config(path: str | Path, **overrides: Any) -> TrainConfig:
    path = Path(path)
    raw = read_yaml_mapping(path, "training config", empty_ok=True)
    try:
        return TrainConfig.model_validate(_deep_update(raw, overrides))
    except ValidationError as e:
        raise ValueError(f"{path}: invalid training config: {describe_errors(e)}") from None


def _deep_update(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_update(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


@dataclass
class TrainResult:
    model_dir: Path
    best_epoch: int
    epochs_run: int
    validation: dict[str, dict[str, Any]]  # attribute -> metrics at the best epoch
    history: list[dict[str, Any]]
    items_per_second: float
    validation_probs: dict[str, np.ndarray]  # attribute -> the best model's validation scores
