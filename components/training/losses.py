"""Supervised loss over all attributes; products without a label add nothing for that attribute."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.models.fusion import FusionOutput
from components.models.heads import HeadSpec


def attribute_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    rows: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss over labelled rows (and `rows`, when given); 0 when there are none.

    multiclass: y is (B,) with -1 for no label; multilabel: y is (B, C) with a row of -1 for no label.
    `label_smoothing` (multiclass): cross-entropy against (1 - e) one-hot + e uniform.
    `log_prior` (multiclass, (C,)): logit-adjusted loss (Menon et al., 2021): the loss sees
    logits + tau log prior, so the raw logits used at prediction time are pushed towards
    balanced accuracy, which lifts rare values (macro-F1).
    """
    labelled = y >= 0 if kind == "multiclass" else (y >= 0).all(dim=-1)
    if rows is not None:
        labelled = labelled & rows
    if not labelled.any():
        return logits.sum() * 0.0  # keeps the graph; adds nothing
    if kind == "multiclass":
        z = logits[labelled].float()
        if log_prior is not None:
            z = z + log_prior.to(z.device)
        return F.cross_entropy(z, y[labelled], label_smoothing=label_smoothing)
    return F.binary_cross_entropy_with_logits(logits[labelled].float(), y[labelled])


def supervised_loss(
    out: FusionOutput,
    y: dict[str, torch.Tensor],
    specs: list[HeadSpec],
    label_smoothing: float = 0.0,
    log_priors: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum over attributes of the fused prediction's loss, plus the mean loss of any extra
    (per-modality) predictions a fusion asks to supervise. `log_priors`: per attribute,
    tau * log(class prior) for the logit-adjusted loss (see `attribute_loss`)."""
    priors = log_priors or {}

    def loss(logits, s, rows=None):
        return attribute_loss(logits[s.name], y[s.name], s.kind, rows, label_smoothing, priors.get(s.name))

    total = sum(loss(out.logits, s) for s in specs)
    for logits, rows in out.extra_logits:
        total = total + sum(loss(logits, s, rows) for s in specs) / len(out.extra_logits)
    return total


def log_class_priors(y: torch.Tensor, n_values: int, tau: float = 1.0, smoothing: float = 1.0) -> torch.Tensor:
    """tau * log of the (add-`smoothing`) frequency of each value among labelled rows of y (multiclass, -1 = none)."""
    y = y[y >= 0]
    counts = torch.bincount(y, minlength=n_values).float() + smoothing
    return tau * (counts / counts.sum()).log()
