"""AttributeModel = text encoder + image encoder + fusion (with one head per attribute).

timm-style: `forward_features` runs the encoders, `forward_head` the fusion and heads,
`create_model` builds one from a typed config. Saved as safetensors + JSON (no pickle).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from components.features.lexical import N_HASHES, LexicalBatch
from components.models.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig
from components.models.fusion import (
    Features,
    FusionConfig,
    FusionOutput,
    ModalityAttentionConfig,
    create_fusion,
    fusion_reads_pooled_text,
)
from components.models.heads import HeadConfig, HeadSpec, probabilities


class LexicalConfig(BaseModel):
    """A learned embedding of the text's hashed word 1-2 grams, appended to the text vector
    (components.features.lexical): keeps exact words that the sentence encoder blurs."""

    model_config = ConfigDict(extra="forbid")

    buckets: int = Field(2**17, ge=1, le=N_HASHES)  # hashed ids are folded into this many rows
    dim: int = Field(64, ge=1)
    # Training only: hide each n-gram with this probability. Nearly every title has a unique
    # bigram, so without it the embedding memorises training products and grows overconfident.
    dropout: float = Field(0.0, ge=0, lt=1)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: TextEncoderConfig = TextEncoderConfig()
    image: ImageEncoderConfig = ImageEncoderConfig()
    fusion: FusionConfig = ModalityAttentionConfig()
    head: HeadConfig = HeadConfig()
    lexical: LexicalConfig | None = None  # off by default
    attributes: list[str] | None = None  # which dataset attributes to predict; None = all

    @model_validator(mode="after")
    def _lexical_needs_pooled_text(self) -> ModelConfig:
        if self.lexical is not None and not fusion_reads_pooled_text(self.fusion.name):
            raise ValueError(f"lexical: fusion {self.fusion.name!r} does not read the pooled text vector the lexical channel extends")
        return self


class LexicalEmbedding(nn.Module):
    def __init__(self, config: LexicalConfig):
        super().__init__()
        self.buckets, self.dropout = config.buckets, config.dropout
        self.bag = nn.EmbeddingBag(config.buckets, config.dim, mode="sum")
        nn.init.normal_(self.bag.weight, std=0.02)
        self.norm = nn.LayerNorm(config.dim)  # on the same scale as the sentence embedding, whatever the n-gram count

    def forward(self, x: LexicalBatch) -> torch.Tensor:
        weights = x.weights
        if self.training and self.dropout > 0:
            weights = weights * (torch.rand_like(weights) >= self.dropout)
        return self.norm(self.bag(x.ids % self.buckets, x.offsets, per_sample_weights=weights))


class Vocab(BaseModel):
    """The values of one attribute, in head-output order."""

    kind: str
    values: list[str]


class AttributeModel(nn.Module):
    def __init__(self, config: ModelConfig, vocab: dict[str, Vocab]):
        super().__init__()
        self.config = config
        self.vocab = vocab
        self.specs = [HeadSpec(name, v.kind, len(v.values)) for name, v in vocab.items()]  # type: ignore[arg-type]
        self.text_encoder = TextEncoder(config.text)
        self.image_encoder = ImageEncoder(config.image)
        self.lexical = LexicalEmbedding(config.lexical) if config.lexical is not None else None
        text_dim = self.text_encoder.dim + (config.lexical.dim if config.lexical is not None else 0)
        self.fusion = create_fusion(
            config.fusion, text_dim, self.image_encoder.dim, self.specs, config.head,
            image_token_dim=self.image_encoder.token_dim,
        )

    @property
    def needs_tokens(self) -> bool:
        return self.fusion.needs_tokens

    def forward_features(self, batch: dict[str, torch.Tensor]) -> Features:
        """Run both encoders on a collated batch (see components.features.preprocess)."""
        text_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        t = self.text_encoder(**text_inputs)
        has_image = batch["has_image"]
        lexical = LexicalBatch.from_dict(batch) if self.lexical is not None else None
        if not self.fusion.reads_image:  # e.g. `text`: skip the CNN (most of a fine-tuning step's cost)
            return Features(text=t.pooled, image=t.pooled.new_zeros(len(has_image), self.image_encoder.dim), has_image=has_image, lexical=lexical)
        i = self.image_encoder(batch["pixels"])
        keep = has_image[:, None].to(i.pooled.dtype)
        return Features(
            text=t.pooled,
            image=i.pooled * keep,
            has_image=has_image,
            text_tokens=t.tokens if self.needs_tokens else None,
            text_mask=t.mask if self.needs_tokens else None,
            image_tokens=i.tokens * keep[:, :, None] if self.needs_tokens else None,
            lexical=lexical,
        )

    def forward_head(self, features: Features) -> FusionOutput:
        if self.lexical is not None:
            if features.lexical is None:
                raise ValueError("this model has a lexical channel: its features need the hashed n-grams (Features.lexical)")
            features = replace(features, text=torch.cat([features.text, self.lexical(features.lexical)], dim=-1))
        return self.fusion(features)

    def forward(self, batch: dict[str, torch.Tensor]) -> FusionOutput:
        return self.forward_head(self.forward_features(batch))

    def probabilities(self, out: FusionOutput) -> dict[str, torch.Tensor]:
        return {s.name: probabilities(out.logits[s.name], s.kind) for s in self.specs}

    def encoder_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
        """(text encoder, image encoder, the rest): they get separate learning rates."""
        text = list(self.text_encoder.parameters())
        image = list(self.image_encoder.parameters())
        seen = {id(p) for p in text + image}
        rest = [p for p in self.parameters() if id(p) not in seen]
        return text, image, rest


def create_model(config: ModelConfig | dict | str, vocab: dict[str, Vocab | dict], **overrides) -> AttributeModel:
    """Build a model from a config, a dict, or just a fusion name: `create_model("concat", vocab)`."""
    if isinstance(config, str):
        config = {"fusion": {"name": config}}
    if isinstance(config, dict):
        config = ModelConfig.model_validate({**config, **overrides})
    elif overrides:
        config = config.model_copy(update=overrides)
    vocab = {k: v if isinstance(v, Vocab) else Vocab.model_validate(v) for k, v in vocab.items()}
    if config.attributes is not None:
        missing = sorted(set(config.attributes) - set(vocab))
        if missing:
            raise ValueError(f"model config names attributes {missing} that the dataset does not have")
        vocab = {k: vocab[k] for k in config.attributes}
    return AttributeModel(config, vocab)


# --- saving and loading -------------------------------------------------------------------------

WEIGHTS, CONFIG, VOCAB, THRESHOLDS = "model.safetensors", "config.json", "vocab.json", "thresholds.json"


def save_model(
    model: AttributeModel,
    out_dir: Path,
    thresholds: dict[str, list[float | None]] | None = None,
    include_encoders: bool = True,
    extra: dict | None = None,
) -> Path:
    """Write weights + config + vocab (+ thresholds). Frozen pretrained encoders need not be
    stored again (`include_encoders=False`): they are rebuilt from their config on load."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if not include_encoders:
        state = {k: v for k, v in state.items() if not k.startswith(("text_encoder.", "image_encoder."))}
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(out_dir / WEIGHTS))
    meta = {"model": model.config.model_dump(mode="json"), "includes_encoders": include_encoders, **(extra or {})}
    (out_dir / CONFIG).write_text(json.dumps(meta, indent=1))
    (out_dir / VOCAB).write_text(json.dumps({k: v.model_dump() for k, v in model.vocab.items()}, indent=1))
    if thresholds is not None:
        (out_dir / THRESHOLDS).write_text(json.dumps(thresholds, indent=1))
    return out_dir


def load_model(model_dir: str | Path, device: str | torch.device = "cpu") -> AttributeModel:
    """A saved model folder -> its model in eval mode (an `EnsembleModel` for an ensemble folder,
    which predicts like an `AttributeModel`)."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved attrflow model (no {CONFIG})")
    meta = json.loads((model_dir / CONFIG).read_text())
    if "ensemble" in meta:
        from components.models.ensemble import load_ensemble  # it builds on this module

        return load_ensemble(model_dir, meta, device)  # type: ignore[return-value]
    vocab = {k: Vocab.model_validate(v) for k, v in json.loads((model_dir / VOCAB).read_text()).items()}
    model = AttributeModel(ModelConfig.model_validate(meta["model"]), vocab)
    state = load_file(str(model_dir / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if not meta["includes_encoders"]:
        missing = [k for k in missing if not k.startswith(("text_encoder.", "image_encoder."))]
    if missing or unexpected:
        raise ValueError(f"{model_dir}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval()


def load_thresholds(model_dir: str | Path) -> dict[str, list[float | None]]:
    path = Path(model_dir) / THRESHOLDS
    return json.loads(path.read_text()) if path.is_file() else {}


def load_meta(model_dir: str | Path) -> dict:
    return json.loads((Path(model_dir) / CONFIG).read_text())
