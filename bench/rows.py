"""The benchmark's rows: shared encoders and training settings, each row's fusion, and a row's config."""

from __future__ import annotations

from typing import Any

from bench.common import ATTRIBUTES
from components.settings import get_settings
from components.training.trainer import TrainConfig

LAMBDAS = [0.0, 1e-3, 1e-2, 1e-1]  # lambda_kl of the modality_attention rows

# Frozen encoders, shared by every attrflow row (one embedding cache). Images are 60x80
# (w x h); 128x96 (h x w) keeps their aspect ratio at ~1.6x, which EfficientNet-Lite0 handles
# far better than the native size and embeds at ~150 img/s on 2 cores. Multi-scale pooling
# (stages 0-3 pooled on a 3x3 grid, appended to the last stage's global pool) keeps the
# colour information that the ImageNet head discards. Titles are short: 32 tokens suffice.
ENCODERS: dict[str, Any] = {
    "text": {"name": "default", "pooling": "mean", "max_length": 32},
    "image": {"name": "default", "image_size": [128, 96], "extra_stages": [0, 1, 2, 3], "extra_grid": 3},
}
HEAD = {"hidden": 256, "dropout": 0.2}
# The lexical channel (components.features.lexical): a learned embedding of the title's hashed
# word 1-2 grams beside the MiniLM vector, for every row that reads the pooled text. It keeps
# the exact words ("Navy Blue", "Capris") that mean pooling blurs; n-gram dropout keeps it from
# memorising training titles. See docs/results.md, "What made the difference".
LEXICAL: dict[str, Any] = {"buckets": 2**17, "dim": 64, "dropout": 0.5}
TRAINING: dict[str, Any] = {
    "frozen": True,
    "epochs": 12,  # 14 epochs gained < 0.5 point of validation macro-F1 and missed the 45-minute budget
    "batch_size": 256,
    "lr_head": 2e-3,
    "weight_decay": 0.01,
    "warmup_share": 0.05,
    "grad_clip": 1.0,
    "patience": 3,
    "monitor": "f1_macro",
    "target_precision": 0.95,
    "seed": 0,
    "label_smoothing": 0.0,
    "logit_adjust_tau": 0.0,
    # Modality dropout: hide the image of half the products in each training batch, so the
    # heads cannot memorise rare products through 3,008 image dimensions and keep using the
    # title (what made multimodal rows beat `text`; see docs/results.md).
    "image_dropout": 0.5,
}

# name -> (fusion config, training overrides)
ROWS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text": ({"name": "text"}, {}),
    "image": ({"name": "image"}, {"image_dropout": 0.0}),  # no image, nothing to learn from
    "concat": ({"name": "concat"}, {}),
    "late": ({"name": "late", "alpha": None}, {}),
    # Token-level fusion: ~20x more work per item than the pooled fusions; fewer epochs.
    "cross_attention": (
        {"name": "cross_attention", "dim": 256, "heads": 4, "dropout": 0.1},
        {"epochs": 5, "batch_size": 128, "lr_head": 1e-3},
    ),
    # No image dropout here: hiding the image forces the gate to text, and it learns to stay there.
    **{
        f"modality_attention_l{lam:g}": (
            {"name": "modality_attention", "lambda_kl": lam, "per_attribute": True},
            {"image_dropout": 0.0},
        )
        for lam in LAMBDAS
    },
}
COLOUR_ROWS = ["text", "image", "concat", "modality_attention"]  # the last one with the best lambda
# The colour-hidden table reports baseColour only, so its rows train the baseColour head alone
# (the same fusion and settings; a fifth of the head compute).
COLOUR_ATTRIBUTES = ["baseColour"]

# Full fine-tuning (--finetune, after the frozen rows): each row starts from its frozen row's
# trained fusion and heads (`init_from`: linear probing, then fine-tuning, Kumar et al. 2022) and
# trains the encoders too, for a budget of optimizer steps: on this 2-core CPU the fused rows run
# at ~18 items/s a lane, so a full epoch (32k products) would take ~30 minutes a row.
FINETUNE_OF = ["text", "image", "concat", "modality_attention"]  # the last one with the best lambda
FINETUNE_PREFIX = "finetune-"
FINETUNE: dict[str, Any] = {
    "frozen": False,
    "epochs": 1,
    "max_steps": 200,
    "batch_size": 32,
    "lr_head": 1e-4,
    "lr_text": 2e-5,
    "lr_image": 1e-4,
    "warmup_share": 0.1,
    "patience": 1,
}

ENSEMBLE = "ensemble"  # the row combining the trained rows (bench/ensemble.py)


def train_config(fusion: dict[str, Any], overrides: dict[str, Any], attributes: list[str] = ATTRIBUTES) -> TrainConfig:
    reads_pooled_text = fusion["name"] not in ("image", "cross_attention")
    return TrainConfig.model_validate(
        {
            "model": {
                **ENCODERS,
                "fusion": fusion,
                "head": HEAD,
                "attributes": attributes,
                "lexical": LEXICAL if reads_pooled_text else None,
            },
            "training": {**TRAINING, **overrides},
        }
    )


def row_config(name: str, attributes: list[str] = ATTRIBUTES) -> TrainConfig:
    """The config of a row: one of ROWS, `ROW@seedN` (that row with training seed N), or
    `finetune-ROW` (that row's model fine-tuned with its encoders)."""
    if name.startswith(FINETUNE_PREFIX):
        base = name.removeprefix(FINETUNE_PREFIX)
        fusion, overrides = ROWS[base]
        init = get_settings().home.resolve() / "bench" / "quality" / base
        return train_config(fusion, {**overrides, **FINETUNE, "init_from": str(init)}, attributes)
    base, _, seed = name.partition("@seed")
    fusion, overrides = ROWS[base]
    return train_config(fusion, {**overrides, "seed": int(seed)} if seed else overrides, attributes)
