"""The value-extraction model: BIO tags per attribute on the text encoder's token vectors, an
optional attribute-set head (which attributes the product has a value for), the KL consistency
term between the two (M-JAVE) and attribute range minimisation at decoding (ULS-DRAM).

Input: `title [SEP] category` (the category as the second segment, optional); only the title's
tokens are tagged. A product's spans are character offsets into its title.

With an image encoder, M-JAVE's visual gates: the global gate adds the pooled image to every
token through a learned gate, the regional gate lets each token attend to the image's regions
and adds what it finds, gated too (Zhu et al. 2020, "Multimodal Joint Attribute Prediction and
Value Extraction for E-commerce Product"). Products without an image pass the gates unchanged.
Frozen encoders' outputs may come in the batch (`text_tokens`, `text`, `image`, `image_tokens`,
`has_image`: the embedding cache, components.features.cache) instead of being computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F
from torchcrf import CRF

from components.catalog.spans import SpanRow
from components.models.bio import N_TAGS, B, I, O
from components.models.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig
from components.models.heads import Vocab

IGNORE = -100
ATTRIBUTES = "attributes"  # the vocab key holding an extraction model's attribute list


class ExtractionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["extraction"] = "extraction"
    text: TextEncoderConfig = TextEncoderConfig(max_length=128)
    category_input: bool = True  # feed the category as the second text segment
    dropout: float = Field(0.1, ge=0, lt=1)
    o_weight: float = Field(1.0, gt=0)  # loss weight of O tags (most of them) against B and I
    # A linear-chain CRF over each attribute's BIO layer (pytorch-crf; transitions shared by the
    # attributes): trained by its sequence likelihood instead of per-token cross-entropy (o_weight
    # then unused), decoded by Viterbi with its learned transitions.
    crf: bool = False
    attribute_head: bool = False  # multi-label head: which attributes the product has a value for
    lambda_attribute: float = Field(1.0, ge=0)  # its loss weight
    lambda_kl: float = Field(0.0, ge=0)  # KL consistency between the head and the tagger (needs the head)
    range_minimisation: bool = False  # decode only attributes the head accepts (needs the head)
    # ... and give each accepted attribute its best span where the tagger found none (the head
    # picks the attribute set, the tagger where the values are, as in ULS-DRAM).
    fill_accepted: bool = False
    attribute_threshold: float = Field(0.5, gt=0, lt=1)
    # Frozen text encoder (its token vectors may then come from the embedding cache) and a few
    # transformer layers trained over them, so that tags still see their context.
    frozen_text: bool = False
    context_layers: int = Field(0, ge=0)
    # M-JAVE's visual gates over a frozen image encoder (`image`: its pooled vector and regions).
    image: ImageEncoderConfig | None = None
    global_visual_gate: bool = False
    regional_visual_gate: bool = False
    # ULS-DRAM's text-guided region selection (needs the regional gate): the text scores each image
    # region, tokens attend only to the `region_top_k` best, weighted by that score.
    region_top_k: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _needs_head(self) -> ExtractionConfig:
        if not self.attribute_head and (self.lambda_kl > 0 or self.range_minimisation or self.fill_accepted):
            raise ValueError("lambda_kl, range_minimisation and fill_accepted need attribute_head: true")
        if (self.global_visual_gate or self.regional_visual_gate) and self.image is None:
            raise ValueError("global_visual_gate and regional_visual_gate need an image encoder (image: {...})")
        if self.region_top_k is not None and not self.regional_visual_gate:
            raise ValueError("region_top_k selects regions for the regional gate: it needs regional_visual_gate: true")
        return self

    @property
    def gated(self) -> bool:
        return self.global_visual_gate or self.regional_visual_gate


@dataclass
class ExtractionOutput:
    tag_logits: torch.Tensor  # (B, T, A, 3)
    title_mask: torch.Tensor  # (B, T) bool: the title's tokens (the ones tagged)
    attribute_logits: torch.Tensor | None  # (B, A)


class ExtractionModel(nn.Module):
    def __init__(self, config: ExtractionConfig, vocab: dict[str, Vocab]):
        super().__init__()
        if ATTRIBUTES not in vocab:
            raise ValueError(f"an extraction model's vocab needs {ATTRIBUTES!r} (its attribute list)")
        self.config = config
        self.vocab = {ATTRIBUTES: vocab[ATTRIBUTES]}
        self.attributes: list[str] = list(vocab[ATTRIBUTES].values)
        self.index = {a: i for i, a in enumerate(self.attributes)}
        self.text_encoder = TextEncoder(config.text)
        if config.frozen_text:
            self.text_encoder.requires_grad_(False)
        d, n = self.text_encoder.dim, len(self.attributes)
        self.dropout = nn.Dropout(config.dropout)
        self.context = (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, dropout=config.dropout, batch_first=True),
                config.context_layers,
                enable_nested_tensor=False,
            )
            if config.context_layers
            else None
        )
        self.image_encoder = self.gates = None
        if config.gated:
            self.image_encoder = ImageEncoder(config.image).requires_grad_(False)
            self.gates = VisualGates(
                d,
                self.image_encoder.dim,
                self.image_encoder.token_dim,
                config.global_visual_gate,
                config.regional_visual_gate,
                config.region_top_k,
            )
        self.tagger = nn.Linear(d, n * N_TAGS)
        self.crf = CRF(N_TAGS, batch_first=True) if config.crf else None
        self.attribute_head = nn.Linear(d, n) if config.attribute_head else None
        # Learned from training spans widened to whole tokens: span text -> the value it stands for.
        self.surface_forms: dict[str, dict[str, str]] = {}
        # Learned from training spans too: attributes whose values are whole words, so a decoded span
        # stopping inside a word is snapped out to it (catalog.spans.word_aligned_attributes).
        self.word_aligned: dict[str, str] = {}
        self.eval()  # deterministic by default (no dropout); training calls .train()

    # -- inputs ---------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], categories: list[str]) -> dict[str, torch.Tensor]:
        tok = self.text_encoder.tokenizer
        second = categories if self.config.category_input else None
        enc = tok(
            texts,
            second,
            padding="longest",
            truncation="only_first" if second else True,
            max_length=self.config.text.max_length,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        seq = [[s == 0 for s in enc.sequence_ids(i)] for i in range(len(texts))]
        offsets = enc.pop("offset_mapping")
        title = torch.tensor(seq, dtype=torch.bool) & (offsets[..., 1] > offsets[..., 0])
        return {**dict(enc), "offsets": offsets, "title_mask": title}

    def token_edges(self, text: str) -> set[int]:
        return token_edges(self.text_encoder.tokenizer, text)

    def labels(self, rows: list[SpanRow], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tag targets (B, T, A) and attribute targets (B, A). Only the attributes a product names
        are supervised (IGNORE elsewhere): an attribute not named may still be in the title."""
        offsets, title = batch["offsets"], batch["title_mask"]
        bsz, T = title.shape
        A = len(self.attributes)
        tags = torch.full((bsz, T, A), IGNORE, dtype=torch.long)
        present = torch.full((bsz, A), float(IGNORE))
        for b, row in enumerate(rows):
            named = torch.tensor([self.index[a] for a in row.values if a in self.index], dtype=torch.long)
            tags[b, title[b].nonzero()[:, :1], named[None, :]] = O
            for a in named:
                present[b, a] = 0.0
            for s in row.spans:
                if s.attribute not in self.index:
                    continue
                a = self.index[s.attribute]
                inside = title[b] & (offsets[b, :, 0] < s.end) & (offsets[b, :, 1] > s.start)
                idx = inside.nonzero().flatten()
                if len(idx):
                    tags[b, idx, a] = I
                    tags[b, idx[0], a] = B
                    present[b, a] = 1.0
        return {"tags": tags, "present": present}

    # -- model ----------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> ExtractionModel:
        """Frozen encoders stay in eval mode (no dropout, batch-norm statistics left alone)."""
        super().train(mode)
        if self.image_encoder is not None:
            self.image_encoder.eval()
        if self.config.frozen_text:
            self.text_encoder.eval()
        return self

    def frozen_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen pretrained encoders: not saved, rebuilt from the config."""
        return ("image_encoder.",) + (("text_encoder.",) if self.config.frozen_text else ())

    def forward(self, batch: dict[str, torch.Tensor]) -> ExtractionOutput:
        if "text_tokens" in batch:  # the frozen encoder's output, from the embedding cache
            tokens, pooled = batch["text_tokens"].float(), batch["text"].float()
        else:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.frozen_text):
                t = self.text_encoder(**inputs)
            tokens, pooled = t.tokens, t.pooled
        h = self.dropout(tokens)
        if self.context is not None:
            h = self.context(h, src_key_padding_mask=~batch["attention_mask"].bool())
        if self.gates is not None:
            h = self.gates(h, *self.image_inputs(batch, len(h)), text=pooled)
        bsz, T, _ = h.shape
        logits = self.tagger(h).view(bsz, T, len(self.attributes), N_TAGS)
        attr = self.attribute_head(self.dropout(pooled)) if self.attribute_head is not None else None
        return ExtractionOutput(logits, batch["title_mask"], attr)

    def image_inputs(self, batch: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled (B, Dv), regions (B, R, Dr), has_image (B,)): from the batch (cache), from its
        pixels through the frozen image encoder, or none at all (every product without an image)."""
        enc = self.image_encoder
        if "image_tokens" in batch:
            return batch["image"].float(), batch["image_tokens"].float(), batch["has_image"].bool()
        if "pixels" in batch:
            with torch.no_grad():
                out = enc(batch["pixels"])
            return out.pooled, out.tokens, batch["has_image"].bool()
        return torch.zeros(n, enc.dim), torch.zeros(n, 1, enc.token_dim), torch.zeros(n, dtype=torch.bool)

    def transitions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The CRF's learned (start, transition, end) scores for decoding; None without a CRF."""
        if self.crf is None:
            return None
        c = self.crf
        return tuple(t.detach().cpu().numpy() for t in (c.start_transitions, c.transitions, c.end_transitions))

    def crf_loss(self, tag_logits: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per token of the named attributes' tag sequences. A
        sequence is one product's title tokens (a contiguous run from position 1, after [CLS])
        for one attribute it names."""
        bsz, T, A, _ = tag_logits.shape
        emissions = tag_logits[:, 1:].permute(0, 2, 1, 3).reshape(bsz * A, T - 1, N_TAGS)
        targets = tags[:, 1:].permute(0, 2, 1).reshape(bsz * A, T - 1)
        mask = targets != IGNORE
        keep = mask[:, 0]  # named attributes of products with a title
        if not keep.any():
            return tag_logits.sum() * 0.0
        return -self.crf(emissions[keep], targets[keep].clamp(min=0), mask[keep], reduction="token_mean")

    def loss(self, out: ExtractionOutput, labels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        weight = torch.tensor([cfg.o_weight, 1.0, 1.0], device=out.tag_logits.device)
        tags = labels["tags"].to(out.tag_logits.device)
        if self.crf is not None:
            tag_loss = self.crf_loss(out.tag_logits, tags)
        else:
            tag_loss = F.cross_entropy(
                out.tag_logits.reshape(-1, N_TAGS), tags.reshape(-1), weight, ignore_index=IGNORE
            )
        parts = {"tag": tag_loss.item()}
        total = tag_loss
        if out.attribute_logits is not None:
            present = labels["present"].to(out.attribute_logits.device)
            known = present >= 0
            if known.any():
                attr_loss = F.binary_cross_entropy_with_logits(out.attribute_logits[known], present[known])
                total = total + cfg.lambda_attribute * attr_loss
                parts["attribute"] = attr_loss.item()
                if cfg.lambda_kl > 0:
                    kl = consistency_kl(out.attribute_logits.sigmoid(), implied_attributes(out))[known].mean()
                    total = total + cfg.lambda_kl * kl
                    parts["kl"] = kl.item()
        return total, parts


class ExtractionEnsemble(nn.Module):
    """Extraction models trained alike with different seeds, decoded from their mean tag
    probabilities (and mean attribute-head probabilities where every member has the head): the
    seeds make different mistakes, so the mean is better placed and better ranked than any one
    (docs/results.md, value extraction items 9-11). Predicts like an `ExtractionModel`; the
    learned decoding rules (surface forms, word alignment) are the first member's, as all
    members learned them from the same rows."""

    def __init__(self, members: list[ExtractionModel]):
        super().__init__()
        if not members:
            raise ValueError("an extraction ensemble needs at least one member")
        first = members[0]
        for m in members[1:]:
            if m.attributes != first.attributes or m.config.text != first.config.text:
                raise ValueError("extraction ensemble members must tag the same attributes with the same text encoder")
        self.members = nn.ModuleList(members)
        self.config, self.vocab, self.attributes = first.config, first.vocab, first.attributes
        self.image_encoder, self.text_encoder = first.image_encoder, first.text_encoder
        self.surface_forms, self.word_aligned = first.surface_forms, first.word_aligned

    def tokenize(self, texts: list[str], categories: list[str]) -> dict[str, torch.Tensor]:
        return self.members[0].tokenize(texts, categories)

    def token_edges(self, text: str) -> set[int]:
        return self.members[0].token_edges(text)

    def transitions(self) -> None:
        return None  # mean probabilities, decoded without one member's CRF transitions

    def forward(self, batch: dict[str, torch.Tensor]) -> ExtractionOutput:
        outs = [m(batch) for m in self.members]
        tags = torch.stack([o.tag_logits.softmax(-1) for o in outs]).mean(0).clamp_min(1e-12).log()
        heads = [o.attribute_logits for o in outs]
        attr = (
            torch.stack([h.sigmoid() for h in heads]).mean(0).logit(eps=1e-6)
            if all(h is not None for h in heads)
            else None
        )
        return ExtractionOutput(tags, outs[0].title_mask, attr)


Extractor = ExtractionModel | ExtractionEnsemble  # what extraction predicts, scores and serves with


class VisualGates(nn.Module):
    """M-JAVE's gates. Global: h + g * W v (g = sigmoid(W_g [h; W v]) per token and dimension).
    Regional: each token attends to the image's regions (scaled dot product), c = the attended
    regions, h + g_r * c with g_r = sigmoid(W_r [h; c]). Both are zero for products without an image.
    With `top_k` (ULS-DRAM's text-guided region selection), the pooled text scores each region,
    s = (W_s t) . r, tokens attend only to the top_k regions, and log sigmoid(s) is added to their
    attention logits so that the scorer learns which regions the text is about."""

    def __init__(
        self,
        d: int,
        image_dim: int,
        region_dim: int,
        global_gate: bool,
        regional_gate: bool,
        top_k: int | None = None,
    ):
        super().__init__()
        self.top_k = top_k
        self.select = nn.Linear(d, d) if regional_gate and top_k else None
        self.global_proj = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, d)) if global_gate else None
        self.global_gate = nn.Linear(2 * d, d) if global_gate else None
        self.region_proj = nn.Sequential(nn.LayerNorm(region_dim), nn.Linear(region_dim, d)) if regional_gate else None
        self.query = nn.Linear(d, d) if regional_gate else None
        self.regional_gate = nn.Linear(2 * d, d) if regional_gate else None
        self.scale = d**-0.5

    def forward(
        self,
        h: torch.Tensor,
        image: torch.Tensor,
        regions: torch.Tensor,
        has_image: torch.Tensor,
        text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        present = has_image.to(h.dtype)[:, None, None]
        if self.global_proj is not None:
            v = self.global_proj(image)[:, None, :].expand_as(h)
            h = h + present * torch.sigmoid(self.global_gate(torch.cat([h, v], -1))) * v
        if self.region_proj is not None:
            r = self.region_proj(regions)  # (B, R, d)
            c = self.region_attention(h, r, text) @ r
            h = h + present * torch.sigmoid(self.regional_gate(torch.cat([h, c], -1))) * c
        return h

    def region_attention(self, h: torch.Tensor, r: torch.Tensor, text: torch.Tensor | None) -> torch.Tensor:
        """(B, T, R): each token's attention over the projected regions `r`."""
        logits = self.query(h) @ r.transpose(1, 2) * self.scale
        if self.select is not None:
            if text is None:
                raise ValueError("text-guided region selection needs the pooled text vector (text=)")
            score = (self.select(text)[:, None, :] * r).sum(-1) * self.scale  # (B, R)
            chosen = score.topk(min(self.top_k, r.shape[1]), -1).indices
            keep = torch.zeros_like(score, dtype=torch.bool).scatter_(1, chosen, True)
            logits = (logits + F.logsigmoid(score)[:, None, :]).masked_fill(~keep[:, None, :], float("-inf"))
        return logits.softmax(-1)


def cached_inputs(features: dict[str, torch.Tensor], index, length: int) -> dict[str, torch.Tensor]:
    """A batch's frozen-encoder outputs from the embedding cache (rows `index`; token vectors cut to
    the batch's `length`, which the same tokenizer and max_length make line up with the cache)."""
    out = {k: features[k][index] for k in ("text", "image", "has_image") if k in features}
    if "text_tokens" in features:
        out["text_tokens"] = features["text_tokens"][index, :length]
    if "image_tokens" in features:
        out["image_tokens"] = features["image_tokens"][index]
    return out


def token_edges(tokenizer, text: str) -> set[int]:
    """Character positions between a (fast) tokenizer's tokens: where a tagged span may start or end."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return {p for a, b in enc["offset_mapping"] for p in (a, b)} | {0, len(text)}


def implied_attributes(out: ExtractionOutput) -> torch.Tensor:
    """(B, A): the probability the tagger gives each attribute a value, max over title tokens of 1 - p(O)."""
    p_value = 1.0 - out.tag_logits.softmax(-1)[..., O]  # (B, T, A)
    return p_value.masked_fill(~out.title_mask[..., None], 0.0).amax(1)


def consistency_kl(p_head: torch.Tensor, p_tagger: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Elementwise KL(Bernoulli(p_head) || Bernoulli(p_tagger)): 0 where the two tasks agree."""
    p, q = p_head.clamp(eps, 1 - eps), p_tagger.clamp(eps, 1 - eps)
    return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()


__all__ = [
    "B",
    "I",
    "O",
    "ExtractionConfig",
    "ExtractionEnsemble",
    "ExtractionModel",
    "ExtractionOutput",
    "Extractor",
    "VisualGates",
    "cached_inputs",
    "consistency_kl",
]
