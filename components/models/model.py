"""AttributeModel = text encoder + image encoder + fusion (with one head per attribute).

timm-style: `forward_features` runs the encoders, `forward_head` the fusion and heads,
`create_model` builds one from a typed config. Saved and loaded by components.models.io.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from components.features.encoded import Features
from components.features.lexical import N_HASHES, LexicalBatch
from components.models.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig
from components.models.fusion import (
    FusionConfig,
    FusionOutput,
    ModalityAttentionConfig,
    create_fusion,
    fusion_reads_pooled_text,
)
from components.models.heads import HeadConfig, HeadSpec, Vocab, probabilities
from components.models.tagger import ExtractionConfig, ExtractionModel


class LexicalConfig(BaseModel):
    """A learned embedding of the text's hashed word 1-2 grams, appended to the text vector
    (components.features.lexical): keeps exact words that the sentence encoder blurs."""

    model_config = ConfigDict(extra="forbid")

    buckets: int = Field(2**17, ge=1, le=N_HASHES)  # hashed ids are folded into this many rows
    dim: int = Field(64, ge=1)
    # Training only: hide each n-gram with this probability. Nearly every title has a unique
    # bigram, so without it the embedding memorises training products and grows overconfident.
    dropout: float = Field(0.5, ge=0, lt=1)


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: TextEncoderConfig = TextEncoderConfig()
    image: ImageEncoderConfig = ImageEncoderConfig()
    fusion: FusionConfig = ModalityAttentionConfig()
    head: HeadConfig = HeadConfig()
    # On by default for the fusions that read the pooled text (the fashion benchmark's best recipe:
    # it also reads the whole description, which the sentence encoder's window cuts); null = off.
    lexical: LexicalConfig | None = Field(default_factory=LexicalConfig)
    attributes: list[str] | None = None  # which dataset attributes to predict; None = all

    @model_validator(mode="after")
    def _lexical_needs_pooled_text(self) -> ModelConfig:
        if self.lexical is not None and not fusion_reads_pooled_text(self.fusion.name):
            if "lexical" not in self.model_fields_set:  # the default: off where it cannot apply
                self.lexical = None
                return self
            raise ValueError(
                f"lexical: fusion {self.fusion.name!r} does not read the pooled text vector the lexical channel extends"
            )
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
            config.fusion,
            text_dim,
            self.image_encoder.dim,
            self.specs,
            config.head,
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
        reads_lexical = self.lexical is not None or self.fusion.reads_lexical
        lexical = LexicalBatch.from_dict(batch) if reads_lexical else None
        if not self.fusion.reads_image:  # e.g. `text`: skip the CNN (most of a fine-tuning step's cost)
            return Features(
                text=t.pooled,
                image=t.pooled.new_zeros(len(has_image), self.image_encoder.dim),
                has_image=has_image,
                lexical=lexical,
            )
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
                raise ValueError(
                    "this model has a lexical channel: its features need the hashed n-grams (Features.lexical)"
                )
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


def create_model(
    config: ModelConfig | ExtractionConfig | dict | str, vocab: dict[str, Vocab | dict], **overrides
) -> AttributeModel | ExtractionModel:
    """Build a model from a config, a dict, or just a fusion name: `create_model("concat", vocab)`.
    A config with `task: extraction` (or `create_model("extraction", {"attributes": ...})`) builds
    the value-extraction tagger (components.models.tagger), whose vocab lists its attributes."""
    if config == "extraction":
        config = {"task": "extraction"}
    elif isinstance(config, str):
        config = {"fusion": {"name": config}}
    vocab = {k: v if isinstance(v, Vocab) else Vocab.model_validate(v) for k, v in vocab.items()}
    if isinstance(config, dict) and config.get("task") == "extraction":
        config = ExtractionConfig.model_validate({**config, **overrides})
    if isinstance(config, ExtractionConfig):
        return ExtractionModel(config.model_copy(update=overrides) if overrides else config, vocab)
    if isinstance(config, dict):
        config = ModelConfig.model_validate({**config, **overrides})
    elif overrides:
        config = config.model_copy(update=overrides)
    if config.attributes is not None:
        missing = sorted(set(config.attributes) - set(vocab))
        if missing:
            raise ValueError(f"model config names attributes {missing} that the dataset does not have")
        vocab = {k: vocab[k] for k in config.attributes}
    return AttributeModel(config, vocab)
