"""Fusion strategies: interchangeable modules behind one interface, selected by name.

Every fusion takes the encoders' `Features` and returns per-attribute logits
(`FusionOutput`), so losses, metrics and serving never depend on the strategy.
The formulas follow docs/architecture.md (section Models).

A product without an image is handled by masking: its image term is dropped and
attention is forced to text. No image is ever invented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from components.features.encoded import Features
from components.models.heads import HeadConfig, Heads, HeadSpec


@dataclass
class FusionOutput:
    logits: dict[str, torch.Tensor]
    aux_loss: torch.Tensor  # already weighted, added to the supervised loss
    modality_weights: torch.Tensor | None = None  # (B, A, 2): [text, image] weight per attribute
    # Extra predictions that are supervised too (late fusion's per-modality heads), each with
    # an optional row mask saying which products it may learn from.
    extra_logits: list[tuple[dict[str, torch.Tensor], torch.Tensor | None]] = field(default_factory=list)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextFusionConfig(_Config):
    name: Literal["text"] = "text"


class ImageFusionConfig(_Config):
    name: Literal["image"] = "image"


class ConcatFusionConfig(_Config):
    name: Literal["concat"] = "concat"


class ModalityAttentionConfig(_Config):
    name: Literal["modality_attention"] = "modality_attention"
    lambda_kl: float = Field(1e-2, ge=0.0)  # weight of KL(p || uniform), against modality collapse
    per_attribute: bool = True  # one text/image weight per attribute (colour may trust the image, material the text)


class LateFusionConfig(_Config):
    name: Literal["late"] = "late"
    alpha: float | None = Field(None, ge=0.0, le=1.0)  # text weight; None = learned per attribute


class CrossAttentionConfig(_Config):
    name: Literal["cross_attention"] = "cross_attention"
    dim: int = 256
    heads: int = 4
    dropout: float = 0.1


class TfidfLRConfig(_Config):
    """TF-IDF + logistic regression over the text's hashed word 1-2 grams (title and description,
    whole): the linear lexical model, fitted by scikit-learn (components.training.linear), not by
    gradient descent."""

    name: Literal["tfidf_lr"] = "tfidf_lr"
    # Inverse L2 strengths tried per attribute; the best on validation macro-F1 is kept.
    C: list[float] = Field(default_factory=lambda: [1.0, 10.0, 100.0], min_length=1)
    vocabulary_size: int = Field(0, ge=0)  # set by fitting: the n-grams seen in training


FusionConfig = Annotated[
    TextFusionConfig
    | ImageFusionConfig
    | ConcatFusionConfig
    | ModalityAttentionConfig
    | LateFusionConfig
    | CrossAttentionConfig
    | TfidfLRConfig,
    Field(discriminator="name"),
]

FUSIONS: dict[str, type[Fusion]] = {}


def register_fusion(name: str):
    def add(cls: type[Fusion]) -> type[Fusion]:
        FUSIONS[name] = cls
        cls.name = name
        return cls

    return add


def create_fusion(
    config,
    text_dim: int,
    image_dim: int,
    attributes: list[HeadSpec],
    head: HeadConfig,
    image_token_dim: int | None = None,
) -> Fusion:
    """`image_token_dim`: width of the image region tokens when it differs from the pooled
    vector's (multi-scale pooling appends earlier stages to the pooled vector only)."""
    if config.name not in FUSIONS:
        raise KeyError(f"unknown fusion {config.name!r}; known: {sorted(FUSIONS)}")
    cls = FUSIONS[config.name]
    if cls.needs_tokens and image_token_dim is not None and image_token_dim != image_dim:
        return cls(config, text_dim, image_dim, attributes, head, image_token_dim=image_token_dim)
    return cls(config, text_dim, image_dim, attributes, head)


class Fusion(nn.Module):
    name: ClassVar[str]
    needs_tokens: ClassVar[bool] = False
    reads_image: ClassVar[bool] = True  # False: the model need not run the image encoder at all
    reads_text: ClassVar[bool] = True  # False: reads neither the pooled text nor its tokens
    reads_lexical: ClassVar[bool] = False  # True: reads the hashed n-grams (Features.lexical) itself

    def __init__(self, config, text_dim: int, image_dim: int, attributes: list[HeadSpec], head: HeadConfig):
        super().__init__()
        self.config = config
        self.attributes = attributes

    def forward(self, f: Features) -> FusionOutput:  # pragma: no cover - interface
        raise NotImplementedError


def _zero(f: Features) -> torch.Tensor:
    return f.text.new_zeros(())


@register_fusion("text")
class TextOnly(Fusion):
    reads_image = False

    def __init__(self, config, text_dim, image_dim, attributes, head):
        super().__init__(config, text_dim, image_dim, attributes, head)
        self.norm = nn.LayerNorm(text_dim)
        self.heads = Heads(text_dim, attributes, head)

    def forward(self, f: Features) -> FusionOutput:
        return FusionOutput(self.heads(self.norm(f.text)), _zero(f))


@register_fusion("image")
class ImageOnly(Fusion):
    def __init__(self, config, text_dim, image_dim, attributes, head):
        super().__init__(config, text_dim, image_dim, attributes, head)
        self.norm = nn.LayerNorm(image_dim)
        self.heads = Heads(image_dim, attributes, head)

    def forward(self, f: Features) -> FusionOutput:
        # Without an image the head sees zeros and falls back to its bias (the prior).
        x = self.norm(f.image) * f.has_image[:, None]
        return FusionOutput(self.heads(x), _zero(f))


@register_fusion("concat")
class Concat(Fusion):
    def __init__(self, config, text_dim, image_dim, attributes, head):
        super().__init__(config, text_dim, image_dim, attributes, head)
        self.text_norm = nn.LayerNorm(text_dim)
        self.image_norm = nn.LayerNorm(image_dim)
        self.heads = Heads(text_dim + image_dim, attributes, head)

    def forward(self, f: Features) -> FusionOutput:
        x = torch.cat([self.text_norm(f.text), self.image_norm(f.image) * f.has_image[:, None]], dim=-1)
        return FusionOutput(self.heads(x), _zero(f))


@register_fusion("modality_attention")
class ModalityAttention(Fusion):
    """p_txt = sigmoid(W [x_txt, x_img] + b), p_img = 1 - p_txt; heads see [p_txt x_txt, p_img x_img].

    Loss adds lambda * KL(p || uniform), averaged over products that have both modalities.
    """

    def __init__(self, config: ModalityAttentionConfig, text_dim, image_dim, attributes, head):
        super().__init__(config, text_dim, image_dim, attributes, head)
        self.text_norm = nn.LayerNorm(text_dim)
        self.image_norm = nn.LayerNorm(image_dim)
        self.gate = nn.Linear(text_dim + image_dim, len(attributes) if config.per_attribute else 1)
        self.heads = Heads(text_dim + image_dim, attributes, head)

    def forward(self, f: Features) -> FusionOutput:
        xt, xi = self.text_norm(f.text), self.image_norm(f.image)
        has = f.has_image[:, None]
        p_text = torch.sigmoid(self.gate(torch.cat([xt, xi * has], dim=-1)))  # (B, A) or (B, 1)
        p_text = torch.where(has, p_text, torch.ones_like(p_text))  # no image: all weight on text
        p_text = p_text.expand(-1, len(self.attributes))
        p_image = 1.0 - p_text
        logits = {}
        for a, spec in enumerate(self.attributes):
            x = torch.cat([p_text[:, a : a + 1] * xt, p_image[:, a : a + 1] * xi * has], dim=-1)
            logits[spec.name] = self.heads.forward_one(spec.name, x)
        weights = torch.stack([p_text, p_image], dim=-1)  # (B, A, 2)
        kl = kl_to_uniform(weights)[f.has_image]
        aux = self.config.lambda_kl * kl.mean() if kl.numel() else _zero(f)
        return FusionOutput(logits, aux, modality_weights=weights)


def kl_to_uniform(weights: torch.Tensor) -> torch.Tensor:
    """sum_j p_j log(p_j / (1/M)) over the last axis, averaged over attributes: (B, A, M) -> (B,)."""
    m = weights.shape[-1]
    p = weights.clamp_min(1e-8)
    return (p * (p.log() + torch.log(torch.tensor(float(m))))).sum(-1).mean(-1)


@register_fusion("late")
class Late(Fusion):
    """Decision-level fusion: per-modality heads, probabilities mixed as alpha * p_text + (1 - alpha) * p_image."""

    def __init__(self, config: LateFusionConfig, text_dim, image_dim, attributes, head):
        super().__init__(config, text_dim, image_dim, attributes, head)
        self.text = TextOnly(TextFusionConfig(), text_dim, image_dim, attributes, head)
        self.image = ImageOnly(ImageFusionConfig(), text_dim, image_dim, attributes, head)
        # alpha = sigmoid(a); a learned scalar per attribute unless a fixed alpha is configured.
        init = torch.zeros(len(attributes))
        if config.alpha is None:
            self.alpha_logit = nn.Parameter(init)
        else:
            self.register_buffer("alpha_logit", torch.logit(init + config.alpha, eps=1e-6))

    def alphas(self) -> torch.Tensor:
        return torch.sigmoid(self.alpha_logit)

    def forward(self, f: Features) -> FusionOutput:
        lt, li = self.text(f).logits, self.image(f).logits
        alpha = torch.where(f.has_image[:, None], self.alphas()[None, :], torch.ones_like(self.alphas()[None, :]))
        logits, weights = {}, []
        for a, spec in enumerate(self.attributes):
            w = alpha[:, a : a + 1]
            if spec.kind == "multiclass":
                p = w * lt[spec.name].softmax(-1) + (1 - w) * li[spec.name].softmax(-1)
                logits[spec.name] = p.clamp_min(1e-8).log()  # softmax(log p) = p
            else:
                p = w * lt[spec.name].sigmoid() + (1 - w) * li[spec.name].sigmoid()
                logits[spec.name] = torch.logit(p, eps=1e-6)  # sigmoid(logit p) = p
            weights.append(torch.cat([w, 1 - w], dim=-1))
        return FusionOutput(
            logits,
            _zero(f),
            modality_weights=torch.stack(weights, dim=1),
            extra_logits=[(lt, None), (li, f.has_image)],
        )


@register_fusion("cross_attention")
class CrossAttention(Fusion):
    """h' = SA(h,h,h) + VG * SA(h,v,v), VG_i = sigmoid(W1 h_i + W2 v_0 + b); predict from sum_i h'_i.

    Text tokens h query the image regions v; the visual gate VG decides per token how much
    of the image to let in (v_0 is the pooled image vector).
    """

    needs_tokens = True

    def __init__(self, config: CrossAttentionConfig, text_dim, image_dim, attributes, head, image_token_dim=None):
        super().__init__(config, text_dim, image_dim, attributes, head)
        d = config.dim
        self.h_proj = nn.Linear(text_dim, d)
        self.v_proj = nn.Linear(image_token_dim or image_dim, d)
        self.v0_proj = nn.Linear(image_dim, d)
        self.self_attn = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.gate_h = nn.Linear(d, d)
        self.gate_v = nn.Linear(d, d, bias=False)
        self.norm = nn.LayerNorm(d)
        self.heads = Heads(d, attributes, head)

    def forward(self, f: Features) -> FusionOutput:
        if f.text_tokens is None or f.image_tokens is None or f.text_mask is None:
            raise ValueError("cross_attention needs text and image tokens (encode with tokens)")
        h = self.h_proj(f.text_tokens)
        v = self.v_proj(f.image_tokens)
        v0 = self.v0_proj(f.image)
        pad = ~f.text_mask
        sa, _ = self.self_attn(h, h, h, key_padding_mask=pad, need_weights=False)
        ca, _ = self.cross_attn(h, v, v, need_weights=False)
        gate = torch.sigmoid(self.gate_h(h) + self.gate_v(v0)[:, None, :])
        gate = gate * f.has_image[:, None, None]  # no image: the visual term is dropped
        out = (sa + gate * ca) * f.text_mask[..., None]
        pooled = self.norm(out.sum(dim=1))
        return FusionOutput(self.heads(pooled), _zero(f))


@register_fusion("tfidf_lr")
class TfidfLR(Fusion):
    """logits = W^T x + b, x = the product's TF-IDF vector over the n-grams seen in training (binary
    term frequency times idf, L2-normalised: scikit-learn's TfidfTransformer on presence counts).

    The fitted vocabulary is a sorted buffer of hashed n-gram ids; an n-gram outside it is
    ignored, as TfidfVectorizer ignores unknown words. W and b come from scikit-learn's
    LogisticRegression (components.training.linear), so this module only scores.
    """

    reads_image = False
    reads_text = False
    reads_lexical = True

    def __init__(self, config: TfidfLRConfig, text_dim, image_dim, attributes, head):
        super().__init__(config, text_dim, image_dim, attributes, head)
        size = max(config.vocabulary_size, 1)
        self.sizes = [a.n_values for a in attributes]
        self.register_buffer("ngram_ids", torch.full((size,), -1, dtype=torch.long))  # sorted
        self.register_buffer("idf", torch.zeros(size))
        self.weight = nn.Parameter(torch.zeros(size, sum(self.sizes)))
        self.bias = nn.Parameter(torch.zeros(sum(self.sizes)))

    def forward(self, f: Features) -> FusionOutput:
        if f.lexical is None:
            raise ValueError("tfidf_lr reads the hashed n-grams (Features.lexical); the batch has none")
        ids, offsets = f.lexical.ids, f.lexical.offsets
        pos = torch.searchsorted(self.ngram_ids, ids).clamp_max(len(self.ngram_ids) - 1)
        w = torch.where(self.ngram_ids[pos] == ids, self.idf[pos], 0.0)
        counts = torch.diff(offsets, append=offsets.new_tensor([len(ids)]))
        doc = torch.repeat_interleave(torch.arange(len(offsets), device=ids.device), counts)
        norm = w.new_zeros(len(offsets)).index_add_(0, doc, w * w).sqrt().clamp_min(1e-12)
        z = F.embedding_bag(pos, self.weight, offsets, mode="sum", per_sample_weights=w / norm[doc]) + self.bias
        logits = dict(zip([a.name for a in self.attributes], z.split(self.sizes, dim=-1), strict=True))
        return FusionOutput(logits, z.new_zeros(()))


def fusion_needs_tokens(name: str) -> bool:
    return FUSIONS[name].needs_tokens


def fusion_reads_pooled_text(name: str) -> bool:
    """Whether the fusion reads `Features.text` (what the lexical channel extends)."""
    return FUSIONS[name].reads_text and name != "image" and not FUSIONS[name].needs_tokens


__all__ = [
    "FUSIONS",
    "ConcatFusionConfig",
    "CrossAttentionConfig",
    "FusionConfig",
    "FusionOutput",
    "ImageFusionConfig",
    "LateFusionConfig",
    "ModalityAttentionConfig",
    "TextFusionConfig",
    "TfidfLRConfig",
    "create_fusion",
    "fusion_needs_tokens",
    "fusion_reads_pooled_text",
    "kl_to_uniform",
    "register_fusion",
]
