"""One prediction head per attribute: `multiclass` (softmax) or `multilabel` (sigmoid)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


@dataclass(frozen=True)
class HeadSpec:
    name: str
    kind: Literal["multiclass", "multilabel"]
    n_values: int


class Vocab(BaseModel):
    """The values of one attribute, in head-output order (an extraction model: its attributes)."""

    kind: str
    values: list[str]


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(256, ge=0)  # 0 = a linear head
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class Heads(nn.Module):
    def __init__(self, in_dim: int, attributes: list[HeadSpec], config: HeadConfig):
        super().__init__()
        self.heads = nn.ModuleDict({a.name: _head(in_dim, a.n_values, config) for a in attributes})

    def forward_one(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return self.heads[name](x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: head(x) for name, head in self.heads.items()}


def _head(in_dim: int, n_out: int, config: HeadConfig) -> nn.Module:
    if config.hidden == 0:
        return nn.Sequential(nn.Dropout(config.dropout), nn.Linear(in_dim, n_out))
    return nn.Sequential(
        nn.Dropout(config.dropout),
        nn.Linear(in_dim, config.hidden),
        nn.GELU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden, n_out),
    )


def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    return logits.softmax(-1) if kind == "multiclass" else logits.sigmoid()
