"""Ensembles: several trained models over the same encoders, their probabilities averaged.

Models trained with different fusions make different mistakes, so the average of their
probabilities is better ranked (R@P95) and more often right than any one of them. Members are
picked from a pool of trained models by greedy forward selection with replacement on the
validation split (Caruana et al., 2004, "Ensemble selection from libraries of models"): start
empty, repeatedly add the model (possibly again) whose addition most improves the validation
score, keep the best prefix. A model picked twice weighs twice.

    weights = select_members(validation_probs, validation_labels, kinds)
    combine_models({name: MODEL_DIR, ...}, weights, dataset, out_dir)   # a folder load_model reads

An ensemble folder holds its members as ordinary model folders (`members/<name>/`), the
weights in config.json, and publishing thresholds fitted on the ensemble's own validation
scores; `load_model` returns an `EnsembleModel`, which predicts, evaluates and serves like an
`AttributeModel`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from components.evaluation.metrics import attribute_metrics, value_thresholds
from components.features.lexical import LexicalBatch
from components.models.fusion import Features, FusionOutput
from components.models.heads import probabilities
from components.models.model import CONFIG, THRESHOLDS, VOCAB, AttributeModel, load_meta

MEMBERS = "members"


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
            for name, m in zip(self.names[1:], self.members[1:]):
                if m.config.text != first.config.text or m.config.image != first.config.image:
                    raise ValueError(f"ensemble member {name!r} has other encoders than {self.names[0]!r}; they cannot be shared")
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
            raise ValueError("this ensemble's members have their own (fine-tuned) encoders: call it on a batch, not on shared features")
        return self._mix([m.forward_head(features) for m in self.members])

    def forward(self, batch: dict[str, torch.Tensor]) -> FusionOutput:
        if self.shared_encoders:
            return self.forward_head(self.forward_features(batch))
        return self._mix([m(batch) for m in self.members])

    def _mix(self, outs: list[FusionOutput]) -> FusionOutput:
        logits = {}
        for s in self.specs:
            p = sum(w * probabilities(o.logits[s.name].float(), s.kind) for w, o in zip(self.weights, outs))
            # Back to logits, so `probabilities` of the mix gives the mean probabilities again.
            logits[s.name] = p.clamp_min(1e-12).log() if s.kind == "multiclass" else torch.logit(p, eps=1e-6)
        # Modality weights: the weighted mean over the members that report them.
        reported = [(w, o.modality_weights) for w, o in zip(self.weights, outs) if o.modality_weights is not None]
        weights = None
        if reported:
            weights = sum(w * mw for w, mw in reported) / sum(w for w, _ in reported)
        return FusionOutput(logits, outs[0].aux_loss.new_zeros(()), modality_weights=weights)

    def probabilities(self, out: FusionOutput) -> dict[str, torch.Tensor]:
        return {s.name: probabilities(out.logits[s.name], s.kind) for s in self.specs}


def select_members(
    probs: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    kinds: Mapping[str, str],
    metric: str = "f1_macro",
    max_steps: int = 10,
) -> dict[str, float]:
    """Greedy ensemble selection with replacement on validation scores.

    `probs`: model -> attribute -> (N, n_values) validation probabilities; `labels`: attribute ->
    encoded labels; the score is `metric` averaged over attributes. Returns model -> weight
    (how often it was picked) for the best ensemble seen; ties keep the smaller ensemble.
    """
    if not probs:
        raise ValueError("select_members: no candidate models")

    def score(mix: Mapping[str, np.ndarray]) -> float:
        return float(np.mean([attribute_metrics(mix[a], labels[a], kinds[a])[metric] for a in labels]))

    counts: dict[str, int] = {}
    total = {a: 0.0 for a in labels}
    best_score, best_counts = -np.inf, {}
    for step in range(1, max_steps + 1):
        trials = {n: score({a: (total[a] + p[a]) / step for a in labels}) for n, p in probs.items()}
        pick = max(trials, key=lambda n: (trials[n], n in counts))  # ties: a model already in
        counts[pick] = counts.get(pick, 0) + 1
        total = {a: total[a] + probs[pick][a] for a in labels}
        if trials[pick] > best_score:
            best_score, best_counts = trials[pick], dict(counts)
    return {n: float(c) for n, c in best_counts.items()}


def combine_models(
    member_dirs: Mapping[str, str | Path],
    weights: Mapping[str, float],
    validation_probs: Mapping[str, np.ndarray],
    validation_labels: Mapping[str, np.ndarray],
    out_dir: str | Path,
    target_precision: float = 0.95,
    extra: dict | None = None,
) -> Path:
    """Write an ensemble folder: the members (weight > 0) copied under `members/`, config.json
    with the weights, vocab.json, thresholds.json fitted on the ensemble's validation
    probabilities (`validation_probs`, attribute -> (N, n_values); labels encoded alike)."""
    out_dir = Path(out_dir)
    names = [n for n in member_dirs if weights.get(n, 0) > 0]
    if not names:
        raise ValueError("combine_models: no member has a weight above 0")
    metas = {n: load_meta(member_dirs[n]) for n in names}
    shutil.rmtree(out_dir, ignore_errors=True)
    (out_dir / MEMBERS).mkdir(parents=True)
    for n in names:
        shutil.copytree(member_dirs[n], out_dir / MEMBERS / n, ignore=shutil.ignore_patterns("checkpoint", "eval-*"))
    first = Path(member_dirs[names[0]])
    shutil.copy2(first / VOCAB, out_dir / VOCAB)
    kinds = {k: v["kind"] for k, v in json.loads((first / VOCAB).read_text()).items()}
    thresholds = {a: value_thresholds(p, validation_labels[a], kinds[a], target_precision) for a, p in validation_probs.items()}
    validation = {a: attribute_metrics(p, validation_labels[a], kinds[a], target_precision) for a, p in validation_probs.items()}
    meta = {
        "ensemble": {"members": names, "weights": {n: float(weights[n]) for n in names}},
        "includes_encoders": any(m["includes_encoders"] for m in metas.values()),
        "target_precision": target_precision,
        **(extra or {}),
    }
    (out_dir / CONFIG).write_text(json.dumps(meta, indent=1))
    (out_dir / THRESHOLDS).write_text(json.dumps(thresholds, indent=1))
    (out_dir / "validation_metrics.json").write_text(json.dumps(validation, indent=1))
    return out_dir


def load_ensemble(model_dir: Path, meta: dict, device: str | torch.device = "cpu") -> EnsembleModel:
    from components.models.model import load_model

    spec = meta["ensemble"]
    members = {n: load_model(model_dir / MEMBERS / n, device) for n in spec["members"]}
    model = EnsembleModel(members, spec["weights"], shared_encoders=not meta["includes_encoders"])
    return model.to(device).eval()
