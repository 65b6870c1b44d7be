"""Supervised loss over all attributes; products without a label add nothing for that attribute."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from components.models.fusion import FusionOutput
from components.models.heads import HeadSpec


def attribute_loss(logits: torch.Tensor, y: torch.Tensor, kind: str, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss over labelled rows (and `rows`, when given); 0 when there are none.

    multiclass: y is (B,) with -1 for no label; multilabel: y is (B, C) with a row of -1 for no label.
    """
    labelled = y >= 0 if kind == "multiclass" else (y >= 0).all(dim=-1)
    if rows is not None:
        labelled = labelled & rows
    if not labelled.any():
        return logits.sum() * 0.0  # keeps the graph; adds nothing
    if kind == "multiclass":
        return F.cross_entropy(logits[labelled].float(), y[labelled])
    return F.binary_cross_entropy_with_logits(logits[labelled].float(), y[labelled])


def supervised_loss(out: FusionOutput, y: dict[str, torch.Tensor], specs: list[HeadSpec]) -> torch.Tensor:
    """Sum over attributes of the fused prediction's loss, plus the mean loss of any extra
    (per-modality) predictions a fusion asks to supervise."""
    total = sum(attribute_loss(out.logits[s.name], y[s.name], s.kind) for s in specs)
    for logits, rows in out.extra_logits:
        total = total + sum(attribute_loss(logits[s.name], y[s.name], s.kind, rows) for s in specs) / len(out.extra_logits)
    return total
