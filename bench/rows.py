"""The benchmark's rows: shared encoders and training settings, each row's fusion, and a row's config."""

from __future__ import annotations

from typing import Any

from bench.common import ATTRIBUTES
from components.settings import get_settings
from components.training.fit import HEAD, LEXICAL, RECIPE, FitConfig
from components.training.trainer import TrainConfig

LAMBDAS = [0.0, 1e-3, 1e-2, 1e-1]  # lambda_kl of the modality_attention rows

# The recipe's frozen encoders, head and lexical channel come from components/training/fit.py (the
# one source of `attrflow fit`, the shipped configs and these rows; why each is so is said there).
ENCODERS: dict[str, Any] = {"text": FitConfig().text.model_dump(), "image": FitConfig().image.model_dump()}
TRAINING: dict[str, Any] = {
    **RECIPE,
    "grad_clip": 1.0,
    "monitor": "f1_macro",
    "target_precision": 0.95,
    "seed": 0,
    "label_smoothing": 0.0,
    "logit_adjust_tau": 0.0,
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
