"""Late fusion by stacking: a text model and an image model, their probabilities combined by a
small learned model (a logistic regression per attribute) instead of late fusion's alpha mix.

    multiclass:  z = W_t log p_text + W_i (has_image * log p_image) + w_h has_image + b
    multilabel:  z_j = a_j logit p_text_j + c_j (has_image * logit p_image_j) + d_j has_image + b_j

The stacker must learn from probabilities its members produce on products they did not train
on (or it learns to trust overfitted members): components/training/stacking.py cross-fits them.
A stacked folder holds the two members as ordinary model folders (`members/text`, `members/image`),
the stacker in `stacker.safetensors`; components.models.io's `load_model` returns a `StackedModel`,
which predicts, evaluates and serves like an `AttributeModel`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from components.features.encoded import Features
from components.features.lexical import LexicalBatch
from components.models.fusion import FusionOutput
from components.models.heads import probabilities
from components.models.model import AttributeModel

SIDES = ("text", "image")


def stacker_inputs(p_text: torch.Tensor, p_image: torch.Tensor, has_image: torch.Tensor, kind: str) -> torch.Tensor:
    """The stacker's features for one attribute: (B, 2C + 1) multiclass, (B, C, 3) multilabel."""
    has = has_image.to(p_text.dtype)[:, None]
    if kind == "multiclass":
        return torch.cat([p_text.clamp_min(1e-7).log(), p_image.clamp_min(1e-7).log() * has, has], dim=-1)
    logit = lambda p: torch.logit(p, eps=1e-6)  # noqa: E731
    return torch.stack([logit(p_text), logit(p_image) * has, has.expand_as(p_text)], dim=-1)


class StackedModel(nn.Module):
    def __init__(self, members: dict[str, AttributeModel]):
        super().__init__()
        text, image = members["text"], members["image"]
        if text.vocab != image.vocab:
            raise ValueError("stacked members predict other attributes or values")
        if text.config.text != image.config.text or text.config.image != image.config.image:
            raise ValueError("stacked members must share their (frozen) encoders")
        image.text_encoder, image.image_encoder = text.text_encoder, text.image_encoder  # one copy runs
        self.text, self.image = text, image
        self.vocab, self.specs = text.vocab, text.specs
        self.text_encoder, self.image_encoder = text.text_encoder, text.image_encoder
        self.shared_encoders = True
        # Filled by the fit (components/training/stacking.py) or by load_state_dict.
        self.multiclass = nn.ModuleDict(
            {s.name: nn.Linear(2 * s.n_values + 1, s.n_values) for s in self.specs if s.kind == "multiclass"}
        )
        # Multilabel: per value three weights (text, image, has_image) and a bias.
        self.multilabel = nn.ParameterDict(
            {s.name: nn.Parameter(torch.zeros(s.n_values, 4)) for s in self.specs if s.kind == "multilabel"}
        )

    @property
    def needs_tokens(self) -> bool:
        return False

    def forward_features(self, batch: dict[str, torch.Tensor]) -> Features:
        side = self.image if self.image.fusion.reads_image else self.text
        f = side.forward_features(batch)
        # Either side may read the n-grams (a lexical channel, tfidf_lr), whichever ran the encoders.
        return replace(f, lexical=LexicalBatch.from_dict(batch)) if "lexical_ids" in batch else f

    def member_probabilities(self, features: Features) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return (
            self.text.probabilities(self.text.forward_head(features)),
            self.image.probabilities(self.image.forward_head(features)),
        )

    def forward_head(self, features: Features) -> FusionOutput:
        p_text, p_image = self.member_probabilities(features)
        logits = {}
        for s in self.specs:
            x = stacker_inputs(p_text[s.name], p_image[s.name], features.has_image, s.kind)
            if s.kind == "multiclass":
                logits[s.name] = self.multiclass[s.name](x)
            else:
                w = self.multilabel[s.name]
                logits[s.name] = (x * w[None, :, :3]).sum(-1) + w[None, :, 3]
        return FusionOutput(logits, features.text.new_zeros(()))

    def forward(self, batch: dict[str, torch.Tensor]) -> FusionOutput:
        return self.forward_head(self.forward_features(batch))

    def probabilities(self, out: FusionOutput) -> dict[str, torch.Tensor]:
        return {s.name: probabilities(out.logits[s.name], s.kind) for s in self.specs}
