"""Small catalogs built inside tests."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from components.catalog.spec import CatalogSpec

HEADER = ["id", "title", "description", "image", "colour", "size"]


def write_image(path: Path, rgb=(200, 30, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), rgb).save(path)
    return path.name


def good_rows(root: Path, n: int = 3) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        write_image(root / "images" / f"g{i}.png")
        rows.append(
            {
                "id": f"g{i}",
                "title": f"red shirt {i}",
                "description": "cotton",
                "image": f"images/g{i}.png",
                "colour": "red|white",
                "size": "M",
            }
        )
    return rows


def write_csv(root: Path, rows: list[dict[str, str]], header=HEADER, name="catalog.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def spec_for(source: Path, **overrides) -> CatalogSpec:
    raw = {
        "name": "tiny",
        "source": str(source),
        "id_column": "id",
        "title_column": "title",
        "description_column": "description",
        "image_column": "image",
        "attributes": [
            {
                "name": "colour",
                "column": "colour",
                "kind": "multilabel",
                "separator": "|",
                "values": ["red", "white", "blue"],
            },
            {"name": "size", "column": "size", "kind": "multiclass"},
        ],
        "split": {"seed": 0, "validation": 0.0, "test": 0.0},
    }
    raw.update(overrides)
    return CatalogSpec.model_validate(raw)


def predict_one(model_dir, title: str = "", description: str = "", image: str | None = None) -> dict:
    """One product through the Predictor, the image read from a path as datasets hold it."""
    from components.features.preprocess import load_image
    from components.inference.inputs import Product
    from components.inference.predictor import Predictor

    product = Product(title=title, description=description, image=load_image(image))
    return Predictor(model_dir).predict([product]).results[0]
