"""The closed-loop benchmark's scenario on the fashion catalog (bench/closed_loop.py), seeded.

- before: BEFORE_N products of the natural mix (the first catalog version);
- controls: windows of CONTROL_N further products of the same mix, one per seed;
- shift A: SHIFT_A_N products, three quarters winter products of RARE_TYPES (each about 1% of the
  catalog), the rest other winter products: the assortment changes;
- shift B: CONTROL_N further products of the natural mix whose photos come from a new camera
  (`new_camera`: darker, warm colour cast), titles untouched.

The catalog the deployments retrain on is a folder the script rewrites (styles.csv + images/,
original photos linked in place, new-camera photos written), as a marketplace's export grows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from PIL import Image, ImageEnhance

from bench.common import SPEC
from bench.serving_model import BenchProduct, catalog_frame

BEFORE_N = 2_000
CONTROL_N = 300
SHIFT_A_N = 800  # 600 of the 691 winter products of RARE_TYPES
TEST_SHARE = 0.2  # of each new product batch: the champion/challenger decision is made on the test split
SEASON = "Winter"
RARE_TYPES = ["Flats", "Nightdress", "Bra", "Earrings", "Clutches"]
SEED = 0


@dataclass
class Scenario:
    folder: Path  # the catalog export the retrain deployment ingests (spec.yaml, styles.csv, images/)
    frame: pd.DataFrame  # the whole catalog (rows with a title and an image file)
    images: Path
    controls: list[list[BenchProduct]]
    shift_a: list[BenchProduct]
    shift_b: list[BenchProduct]
    before_ids: list[str]  # the first catalog version
    catalog_ids: list[str] = field(default_factory=list)  # the products in the export now
    camera_ids: set[str] = field(default_factory=set)  # ... whose photos come from the new camera

    def describe(self) -> dict[str, Any]:
        def mix(ids: list[str]) -> dict[str, Any]:
            rows = self.frame.set_index("id").loc[ids]
            return {
                "products": len(ids),
                "winter_share": round(float((rows["season"] == SEASON).mean()), 3),
                "rare_types_share": round(float(rows["articleType"].isin(RARE_TYPES).mean()), 3),
            }

        return {
            "seed": SEED,
            "before": mix(self.before_ids),
            "control_windows": [mix([p.id for p in w]) for w in self.controls],
            "shift_a": mix([p.id for p in self.shift_a]),
            "shift_b": {**mix([p.id for p in self.shift_b]), "photos": "new_camera: brightness x0.55, blue x0.6"},
            "rare_types": RARE_TYPES,
        }


def _products(rows: pd.DataFrame, images: Path) -> list[BenchProduct]:
    return [
        BenchProduct(id=str(r.id), title=str(r.productDisplayName), image=(images / f"{r.id}.jpg").read_bytes())
        for r in rows.itertuples()
    ]


def build_scenario(folder: Path, controls: int = 5) -> Scenario:
    frame, images = catalog_frame()
    winter = frame["season"] == SEASON
    rare = frame["articleType"].isin(RARE_TYPES)
    n_rare = SHIFT_A_N * 3 // 4
    shift_a = pd.concat(
        [
            frame[winter & rare].sample(n=n_rare, random_state=SEED),
            frame[winter & ~rare].sample(n=SHIFT_A_N - n_rare, random_state=SEED),
        ]
    ).sample(frac=1, random_state=SEED)
    natural = frame.drop(shift_a.index).sample(frac=1, random_state=SEED)
    before = natural.iloc[:BEFORE_N]
    rest = natural.iloc[BEFORE_N:]
    windows = [rest.iloc[i * CONTROL_N : (i + 1) * CONTROL_N] for i in range(controls + 1)]
    scenario = Scenario(
        folder=folder,
        frame=frame,
        images=images,
        controls=[_products(w, images) for w in windows[:controls]],
        shift_a=_products(shift_a, images),
        shift_b=_products(windows[controls], images),
        before_ids=[str(i) for i in before["id"]],
        catalog_ids=[str(i) for i in before["id"]],
    )
    return scenario


def new_camera(jpeg: bytes) -> bytes:
    """The same photo from another camera: darker, with a warm colour cast."""
    image = ImageEnhance.Brightness(Image.open(io.BytesIO(jpeg)).convert("RGB")).enhance(0.55)
    r, g, b = image.split()
    out = io.BytesIO()
    Image.merge("RGB", (r, g, b.point(lambda v: int(v * 0.6)))).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_catalog(scenario: Scenario) -> Path:
    """Write the export (styles.csv, images/, spec.yaml) for the products in `catalog_ids`."""
    folder = scenario.folder
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = scenario.frame.set_index("id").loc[scenario.catalog_ids].reset_index()
    rows.to_csv(folder / "styles.csv", index=False)
    for product_id in scenario.catalog_ids:
        path = folder / "images" / f"{product_id}.jpg"
        source = scenario.images / f"{product_id}.jpg"
        if product_id in scenario.camera_ids:
            if path.is_symlink() or not path.exists():
                path.unlink(missing_ok=True)
                path.write_bytes(new_camera(source.read_bytes()))
        elif not path.exists():
            path.symlink_to(source.resolve())
    spec = yaml.safe_load(SPEC.read_text())
    # the linked photos resolve into the shared catalog: a trusted image root
    spec.update({"name": "fashion-loop", "source": "styles.csv", "image_roots": [str(scenario.images.resolve())]})
    # A larger held-out share than the quality benchmark's: the paired interval of champion and
    # challenger narrows with the test split (splits stick across versions: components/catalog/ingest.py).
    spec["split"] = {**spec["split"], "test": TEST_SHARE}
    spec_path = folder / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_path
