"""Ensembles: several trained models over the same encoders, their probabilities averaged.

Models trained with different fusions make different mistakes, so the average of their
probabilities is better ranked (R@P95) and more often right than any one of them. Which models
and with what weights is decided on the validation split by
components.evaluation.ensemble_selection (`select_members`, `combine_models`, which writes the
folder); components.models.io's `load_model` reads such a folder back as an `EnsembleModel`,
which predicts, evaluates and serves like an `AttributeModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from components.features.encoded import Features
from components.features.lexical import LexicalBatch
from components.models.fusion import FusionOutput
from components.models.heads import probabilities
from components.models.model import AttributeModel


class EnsembleModel(nn.Module):
    """The weighted mean of its members' probabilities. Members that share their encoders
    (frozen pretrained ones with the same config) run them once for all."""

    def __init__(self, members: Mapping[str, AttributeModel], weights: Mapping[str, float], shared_encoders: bool):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.names = list(members)
        self.members = nn.ModuleList(members.values())
        first = self.members[0]
        for name, m in members.items():
            if m.vocab != first.vocab:
                raise ValueError(f"ensemble member {name!r} predicts other attributes or values than {self.names[0]!r}")
        total = sum(weights[n] for n in self.names)
        if total <= 0:
            raise ValueError("ensemble weights must sum to more than 0")
        self.register_buffer("weights", torch.tensor([weights[n] / total for n in self.names], dtype=torch.float32))
        self.shared_encoders = shared_encoders
        if shared_encoders:
            for name, m in zip(self.names[1:], self.members[1:], strict=True):
                if m.config.text != first.config.text or m.config.image != first.config.image:
                    raise ValueError(
                        f"ensemble member {name!r} has other encoders than {self.names[0]!r}; they cannot be shared"
                    )
                m.text_encoder, m.image_encoder = first.text_encoder, first.image_encoder  # one copy runs
        self.vocab, self.specs = first.vocab, first.specs
        self.text_encoder, self.image_encoder = first.text_encoder, first.image_encoder

    @property
    def needs_tokens(self) -> bool:
        return any(m.needs_tokens for m in self.members)

    def forward_features(self, batch: dict[str, torch.Tensor]) -> Features:
        # The shared encoders' outputs, as complete as any member needs them (tokens, image).
        f = max(self.members, key=lambda m: (m.needs_tokens, m.fusion.reads_image)).forward_features(batch)
        # Members with a lexical channel need the n-grams even when that member has none.
        return replace(f, lexical=LexicalBatch.from_dict(batch)) if "lexical_ids" in batch else f

    def forward_head(self, features: Features) -> FusionOutput:
        if not self.shared_encoders:
            raise ValueError(
                "this ensemble's members have their own (fine-tuned) encoders: call it on a batch, not on shared features"
            )
        return self._mix([m.forward_head(features) for m in self.members])

    def forward(self, batch: dict[str, torch.Tensor]) -> FusionOutput:
        if self.shared_encoders:
            return self.forward_head(self.forward_features(batch))
        return self._mix([m(batch) for m in self.members])

    def _mix(self, outs: list[FusionOutput]) -> FusionOutput:
        logits = {}
        for s in self.specs:
            p = sum(
                w * probabilities(o.logits[s.name].float(), s.kind) for w, o in zip(self.weights, outs, strict=True)
            )
            # Back to logits, so `probabilities` of the mix gives the mean probabilities again.
            logits[s.name] = p.clamp_min(1e-12).log() if s.kind == "multiclass" else torch.logit(p, eps=1e-6)
        # Modality weights: the weighted mean over the members that report them.
        reported = [
            (w, o.modality_weights) for w, o in zip(self.weights, outs, strict=True) if o.modality_weights is not None
        ]
        weights = None
        if reported:
            weights = sum(w * mw for w, mw in reported) / sum(w for w, _ in reported)
        return FusionOutput(logits, outs[0].aux_loss.new_zeros(()), modality_weights=weights)

    def probabilities(self, out: FusionOutput) -> dict[str, torch.Tensor]:
        return {s.name: probabilities(out.logits[s.name], s.kind) for s in self.specs}
