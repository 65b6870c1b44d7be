"""Reading a dataset version written by `ingest`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class AttributeVocab:
    name: str
    kind: str  # "multiclass" | "multilabel"
    values: list[str]


@dataclass
class Dataset:
    path: Path
    manifest: dict[str, Any]
    items: pd.DataFrame  # one row per product, with a `split` column
    vocab: dict[str, AttributeVocab]

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def attributes(self) -> list[str]:
        return list(self.vocab)

    def split(self, name: str) -> pd.DataFrame:
        """Rows of one split ('train', 'validation', 'test') or all rows for 'all'."""
        if name == "all":
            return self.items
        if name not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}; use train, validation, test or all")
        return self.items[self.items["split"] == name].reset_index(drop=True)


def load_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a dataset folder (no manifest.json); run `attrflow ingest` first")
    manifest = json.loads(manifest_path.read_text())
    items = pd.read_parquet(path / "items.parquet")
    splits = pd.read_parquet(path / "splits.parquet")
    items = items.merge(splits, on="id", how="left", validate="one_to_one")
    vocab = {
        name: AttributeVocab(name=name, kind=v["kind"], values=list(v["values"]))
        for name, v in json.loads((path / "vocab.json").read_text()).items()
    }
    # Missing values are None (not NaN), multilabel cells plain lists: simple to test and to use.
    for col in ["image_path", "image_sha256", *vocab]:
        items[col] = items[col].astype(object).where(items[col].notna(), None)
    for name, v in vocab.items():
        if v.kind == "multilabel":
            items[name] = items[name].map(lambda c: list(c) if c is not None else None)
    return Dataset(path=path, manifest=manifest, items=items, vocab=vocab)
