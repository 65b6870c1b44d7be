"""`fit`: the automatic model for a catalog. Train a small portfolio within a time budget, then
keep the best member or the ensemble that beats it on validation.

    result = fit(dataset, out_dir, FitConfig(time_budget_seconds=1200))
    result.model_dir        # a model folder (one member, or an ensemble of several)

The portfolio (`PORTFOLIO`, cheapest first): TF-IDF + logistic regression (`tfidf_lr`, a linear
lexical model fitted by scikit-learn), then `text`, `concat`, `late` and `modality_attention` with
two KL weights, all on frozen encoders over one embedding cache and with the benchmark's best
recipe (the lexical channel over title and description, image dropout). Members run until the
budget is spent: each gets an equal share of what is left (at least one epoch). Greedy ensemble
selection on validation (components.evaluation.ensemble_selection) then picks members and
weights; the publishing thresholds are fitted on the chosen model's validation scores. The test
split is never looked at here: evaluation and the promotion rule come after.

With `filter_label_noise`, likely mislabelled train products (confident learning, cleanlab)
lose those labels first and are listed in `label_issues/` beside the model.

Works on small catalogs (batches shrink so that an epoch has enough steps) and on catalogs
without images (members that read images are skipped).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.catalog.dataset import Dataset
from components.evaluation.ensemble_selection import combine_models, select_members
from components.evaluation.metrics import attribute_metrics
from components.features.preprocess import encode_labels
from components.models.encoders import ImageEncoderConfig, TextEncoderConfig
from components.training.trainer import TrainConfig, train

# name -> (model overrides, training overrides) on top of the recipe below.
PORTFOLIO: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tfidf_lr": ({"fusion": {"name": "tfidf_lr"}, "lexical": None}, {}),
    "text": ({"fusion": {"name": "text"}}, {}),
    "concat": ({"fusion": {"name": "concat"}}, {}),
    "late": ({"fusion": {"name": "late"}}, {}),
    # No image dropout: hiding the image pushes the gate to text, and it learns to stay there.
    "modality_attention_l0.01": ({"fusion": {"name": "modality_attention", "lambda_kl": 0.01}}, {"image_dropout": 0.0}),
    "modality_attention_l0.1": ({"fusion": {"name": "modality_attention", "lambda_kl": 0.1}}, {"image_dropout": 0.0}),
    # Not in the default portfolio (FitConfig.members): the image alone, and late fusion by
    # stacking `text` and `image` (components/training/stacking.py; 2 x (folds + 1) trainings).
    "image": ({"fusion": {"name": "image"}, "lexical": None}, {"image_dropout": 0.0}),
    "stacked": ({}, {}),
}
DEFAULT_MEMBERS = ["tfidf_lr", "text", "concat", "late", "modality_attention_l0.01", "modality_attention_l0.1"]
READS_IMAGE = {"concat", "late", "modality_attention_l0.01", "modality_attention_l0.1", "image", "stacked"}
STACKING_FOLDS = 3

# The fashion benchmark's recipe (docs/results.md "What made the difference"; bench/rows.py and
# configs/models/*.yaml carry it too): frozen encoders, the lexical channel with n-gram dropout,
# half the images hidden in training (modality dropout: the heads cannot memorise rare products
# through the image's 3,008 dimensions and keep using the title).
RECIPE: dict[str, Any] = {
    "frozen": True,
    "epochs": 12,  # 14 gained < 0.5 point of validation macro-F1 on fashion
    "batch_size": 256,
    "lr_head": 2e-3,
    "weight_decay": 0.01,
    "warmup_share": 0.05,
    "patience": 3,
    "image_dropout": 0.5,
}
HEAD: dict[str, Any] = {"hidden": 256, "dropout": 0.2}
# The lexical channel (components.features.lexical): hashed word 1-2 grams of title and description
# beside the MiniLM vector; it keeps the exact words ("Navy Blue", "Capris") that mean pooling
# blurs, and n-gram dropout keeps it from memorising training titles.
LEXICAL: dict[str, Any] = {"buckets": 2**17, "dim": 64, "dropout": 0.5}
MIN_STEPS_PER_EPOCH = 16  # small catalogs: smaller batches, so early stopping sees real progress


class FitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time_budget_seconds: float = Field(1200.0, gt=0)
    members: list[str] = Field(default_factory=lambda: list(DEFAULT_MEMBERS), min_length=1)
    # The recipe's frozen encoders (as in configs/models/*.yaml): one embedding cache for all members.
    # Fashion images are 60x80 (w x h); 128x96 (h x w) keeps their aspect ratio, which EfficientNet-
    # Lite0 handles far better than the native size. Multi-scale pooling (stages 0-3 on a 3x3 grid
    # beside the last stage's global pool) keeps the colour that the ImageNet head discards.
    # Titles are short: 32 tokens suffice (the lexical channel reads the description whole).
    text: TextEncoderConfig = TextEncoderConfig(max_length=32)
    image: ImageEncoderConfig = ImageEncoderConfig(image_size=(128, 96), extra_stages=[0, 1, 2, 3], extra_grid=3)
    monitor: str = "f1_macro"  # the validation metric members are selected on (mean over attributes)
    target_precision: float = Field(0.95, gt=0, le=1)
    seed: int = 0
    # Confident learning first (components/training/label_noise.py): train labels that cross-fitted
    # probabilities contradict are removed before the portfolio trains (and reported).
    filter_label_noise: bool = False

    def model_post_init(self, _context: Any) -> None:
        unknown = sorted(set(self.members) - set(PORTFOLIO))
        if unknown:
            raise ValueError(f"unknown portfolio members {unknown}; known: {sorted(PORTFOLIO)}")


@dataclass
class FitResult:
    model_dir: Path
    weights: dict[str, float]  # member -> weight in the chosen model (one member: {name: 1.0})
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> validation score, seconds, ...
    skipped: dict[str, str] = field(default_factory=dict)  # member -> why it did not run
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)  # the chosen model's metrics
    seconds: float = 0.0


def member_config(name: str, config: FitConfig, n_train: int) -> TrainConfig:
    model, training = PORTFOLIO[name]
    batch = max(8, min(RECIPE["batch_size"], n_train // MIN_STEPS_PER_EPOCH))
    return TrainConfig.model_validate(
        {
            "model": {
                "text": config.text.model_dump(),
                "image": config.image.model_dump(),
                "head": HEAD,
                "lexical": LEXICAL,
                **model,
            },
            "training": {
                **RECIPE,
                "batch_size": batch,
                "monitor": config.monitor,
                "target_precision": config.target_precision,
                "seed": config.seed,
                **training,
            },
        }
    )


def fit(dataset: Dataset, out_dir: str | Path, config: FitConfig | None = None, log=print) -> FitResult:
    """Train the portfolio within the budget and write the chosen model to `out_dir`."""
    config = config or FitConfig()
    start = time.perf_counter()
    out_dir = Path(out_dir)
    work = out_dir.parent / (out_dir.name + ".members")
    split = dataset.items["split"].to_numpy()
    va = np.flatnonzero(split == "validation")
    n_train = int((split == "train").sum())
    has_images = bool(dataset.items["image_path"].notna().any()) if "image_path" in dataset.items else False
    result = FitResult(out_dir, {})
    issues = None
    if config.filter_label_noise:
        from components.training.label_noise import find_label_issues, without_label_issues, write_label_issues

        judge = member_config("concat" if has_images else "text", config, n_train)
        issues = find_label_issues(dataset, judge, work / "label-noise", seed=config.seed)
        dataset = without_label_issues(dataset, issues)
        log(f"fit: {len(issues)} train labels flagged as likely wrong and left out")
    trained: dict[str, Any] = {}
    queue = list(config.members)
    while queue:
        name = queue.pop(0)
        if name in READS_IMAGE and not has_images:
            result.skipped[name] = "the catalog has no images"
            continue
        left = config.time_budget_seconds - (time.perf_counter() - start)
        if left <= 0 and trained:
            result.skipped[name] = "time budget spent"
            continue
        # An equal share of what is left for each member still to run (the trainer stops after
        # the epoch that crosses it; the first member always runs).
        runnable = 1 + sum(1 for n in queue if n not in READS_IMAGE or has_images)
        share = max(left, 1.0) / runnable
        t0 = time.perf_counter()
        if name == "stacked":
            trained[name] = _train_stacked(config, dataset, work / name, n_train, share)
        else:
            cfg = member_config(name, config, n_train)
            cfg.training.max_seconds = share
            trained[name] = train(cfg, dataset, work / name, progress=False)
        score = float(np.mean([m[config.monitor] or 0.0 for m in trained[name].validation.values()]))
        result.members[name] = {"validation": score, "seconds": time.perf_counter() - t0}
        log(f"fit: {name} validation {config.monitor} {score:.4f} ({result.members[name]['seconds']:.0f}s)")

    labels = {k: v.numpy()[va] for k, v in encode_labels(dataset.items, dataset.vocab).items()}
    kinds = {k: v.kind for k, v in dataset.vocab.items()}
    probs = {n: r.validation_probs for n, r in trained.items()}

    def score(mix: dict[str, np.ndarray]) -> float:
        return float(np.mean([attribute_metrics(mix[a], labels[a], kinds[a])[config.monitor] or 0.0 for a in labels]))

    # A stacked model is already a combination: it is chosen alone or not at all.
    pool = {n: p for n, p in probs.items() if n != "stacked"}
    weights = select_members(pool, labels, kinds, metric=config.monitor) if pool else {}
    if "stacked" in probs and (not weights or score(probs["stacked"]) > score(_mix(probs, weights, labels))):
        weights = {"stacked": 1.0}
    shutil.rmtree(out_dir, ignore_errors=True)
    if len(weights) == 1:  # one member alone is best: its folder is the model
        (only,) = weights
        shutil.copytree(work / only, out_dir, ignore=shutil.ignore_patterns("checkpoint"))
        mix = probs[only]
    else:
        mix = _mix(probs, weights, labels)
        combine_models(
            {n: work / n for n in weights},
            weights,
            mix,
            labels,
            out_dir,
            config.target_precision,
            extra={"fit": {"members": result.members}},
        )
    if issues is not None:
        write_label_issues(issues, out_dir / "label_issues")
    result.weights = weights
    result.validation = {a: attribute_metrics(mix[a], labels[a], kinds[a], config.target_precision) for a in labels}
    result.seconds = time.perf_counter() - start
    (out_dir / "fit.json").write_text(
        json.dumps(
            {
                "weights": weights,
                "members": result.members,
                "skipped": result.skipped,
                "budget_seconds": config.time_budget_seconds,
                "label_issues": None if issues is None else int(len(issues)),
                "seconds": result.seconds,
            },
            indent=1,
        )
    )
    shutil.rmtree(work, ignore_errors=True)
    log(f"fit: chose {weights} in {result.seconds:.0f}s")
    return result


def _mix(probs: dict, weights: dict[str, float], labels: dict) -> dict[str, np.ndarray]:
    total = sum(weights.values())
    return {a: sum(w * probs[n][a] for n, w in weights.items()) / total for a in labels}


def _train_stacked(config: FitConfig, dataset: Dataset, out_dir: Path, n_train: int, seconds: float) -> Any:
    from components.evaluation.evaluate import predict_split
    from components.models.io import load_model
    from components.training.config import TrainResult
    from components.training.stacking import train_stacked

    sides = {side: member_config(side, config, n_train) for side in ("text", "image")}
    for side in sides.values():  # 2 x (folds + 1) trainings share the member's time
        side.training.max_seconds = seconds / (2 * (STACKING_FOLDS + 1))
    train_stacked(sides, dataset, out_dir, folds=STACKING_FOLDS, seed=config.seed)
    probs = predict_split(load_model(out_dir), out_dir, dataset, "validation").probs
    validation = json.loads((out_dir / "validation_metrics.json").read_text())
    return TrainResult(out_dir, 1, 1, validation, [], 0.0, probs)


def parse_duration(text: str) -> float:
    """'20m', '90s', '1h', '1h30m' or plain seconds -> seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total, number = total + float(number) * units[ch], ""
        else:
            raise ValueError(f"cannot read duration {text!r}: use e.g. 20m, 90s, 1h30m")
    if number or not text or not math.isfinite(total):
        raise ValueError(f"cannot read duration {text!r}: use e.g. 20m, 90s, 1h30m")
    return total
