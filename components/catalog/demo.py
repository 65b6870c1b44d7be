"""The built-in demo catalog: rendered garment-like products with titles and descriptions.

It is built so that text and image each know things the other does not:

- colour (multilabel, one or two colours) is always visible, but named in the
  text for only `colour_in_text` of the products;
- material is named in the text for `material_in_text` of the products but
  visible as a texture for only `material_visible` of them;
- category is visible and usually named; pattern is visible and sometimes named.

A few products have no image or no title (missing modalities) or no material
label (missing label), and a handful of deliberately broken rows (one per
quarantine reason) show what ingestion does with bad input.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (25, 25, 25),
    "white": (250, 250, 250),
    "grey": (128, 128, 128),
    "red": (200, 30, 35),
    "blue": (35, 70, 200),
    "green": (35, 150, 60),
    "yellow": (240, 210, 40),
    "pink": (240, 140, 180),
    "orange": (245, 130, 20),
    "purple": (120, 50, 160),
    "brown": (115, 70, 35),
    "beige": (220, 200, 160),
}
CATEGORIES = ["t-shirt", "dress", "trousers", "skirt", "bag", "jacket"]
MATERIALS = ["cotton", "denim", "leather", "wool", "silk", "polyester"]
PATTERNS = ["solid", "striped", "checked", "dotted"]
STYLES = ["casual", "classic", "sporty", "elegant", "vintage", "slim-fit", "oversized", "everyday"]
BRANDS = ["Nordvik", "Alto", "Mira", "Kestrel", "Lumen", "Oakridge", "Sable", "Tamsin"]
SIZE = 96  # images are SIZE x SIZE pixels


def write_demo_catalog(
    out: str | Path,
    n: int = 2000,
    seed: int = 0,
    defects: bool = True,
    colour_in_text: float = 0.5,
    material_in_text: float = 0.85,
    material_visible: float = 0.3,
) -> Path:
    """Write `catalog.csv`, `images/` and `catalog.yaml` (the spec) into `out`; return the spec path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pid = f"P{i:06d}"
        category = rng.choice(CATEGORIES)
        pattern = rng.choice(PATTERNS)
        colours = rng.sample(sorted(COLOURS), 1 if pattern == "solid" else 2)
        material = rng.choice(MATERIALS)
        show_material = rng.random() < material_visible
        has_image = rng.random() >= 0.03
        image = ""
        if has_image:
            image = f"images/{pid}.png"
            _render(category, pattern, colours, material if show_material else None, rng).save(out / image)
        title, description = _texts(category, pattern, colours, material, rng, colour_in_text, material_in_text)
        if has_image and rng.random() < 0.03:
            title = ""  # a seller who only uploaded a photo
        rows.append(
            {
                "id": pid,
                "title": title,
                "description": description if title else "",
                "image": image,
                "category": category,
                "colour": "|".join(colours),
                "material": "" if rng.random() < 0.04 else material,
                "pattern": pattern,
            }
        )
    columns = (
        list(rows[0]) if rows else ["id", "title", "description", "image", "category", "colour", "material", "pattern"]
    )
    with (out / "catalog.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        if defects and rows:
            _write_defects(f, writer, rows[0], out)
    spec_path = out / "catalog.yaml"
    spec_path.write_text(_spec_yaml())
    return spec_path


def _texts(category, pattern, colours, material, rng, colour_in_text, material_in_text) -> tuple[str, str]:
    words = [rng.choice(BRANDS), rng.choice(STYLES).capitalize()]
    if rng.random() < colour_in_text:
        words.append(" and ".join(colours))
    if pattern != "solid" and rng.random() < 0.6:
        words.append(pattern)
    said_material = rng.random() < material_in_text
    if said_material and rng.random() < 0.5:
        words.append(material)
    words.append(category)
    title = " ".join(words)
    fit = rng.choice(["relaxed", "regular", "tailored", "loose"])
    description = f"A {fit} {category} for every day."
    if said_material and material not in title:
        description = f"A {fit} {category} made of soft {material}."
    return title, description


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _silhouette(category: str, rng: random.Random) -> list[list[tuple[float, float]]]:
    """Polygons (in 0..1 coordinates) that make up the garment's shape."""
    dx = rng.uniform(-0.04, 0.04)

    def shift(poly):
        return [(x + dx, y) for x, y in poly]

    shapes = {
        "t-shirt": [
            [
                (0.3, 0.2),
                (0.7, 0.2),
                (0.9, 0.35),
                (0.8, 0.45),
                (0.7, 0.38),
                (0.7, 0.85),
                (0.3, 0.85),
                (0.3, 0.38),
                (0.2, 0.45),
                (0.1, 0.35),
            ]
        ],
        "jacket": [
            [
                (0.3, 0.15),
                (0.7, 0.15),
                (0.88, 0.3),
                (0.92, 0.85),
                (0.8, 0.85),
                (0.72, 0.4),
                (0.72, 0.88),
                (0.28, 0.88),
                (0.28, 0.4),
                (0.2, 0.85),
                (0.08, 0.85),
                (0.12, 0.3),
            ]
        ],
        "dress": [[(0.38, 0.1), (0.62, 0.1), (0.62, 0.35), (0.82, 0.9), (0.18, 0.9), (0.38, 0.35)]],
        "trousers": [[(0.3, 0.1), (0.7, 0.1), (0.74, 0.9), (0.55, 0.9), (0.5, 0.4), (0.45, 0.9), (0.26, 0.9)]],
        "skirt": [[(0.33, 0.3), (0.67, 0.3), (0.82, 0.75), (0.18, 0.75)]],
        "bag": [
            [(0.2, 0.4), (0.8, 0.4), (0.85, 0.85), (0.15, 0.85)],
            [(0.35, 0.4), (0.38, 0.2), (0.62, 0.2), (0.65, 0.4), (0.59, 0.4), (0.57, 0.26), (0.43, 0.26), (0.41, 0.4)],
        ],
    }
    return [shift(p) for p in shapes[category]]


def _render(category: str, pattern: str, colours: list[str], material: str | None, rng: random.Random) -> Image.Image:
    bg = _jitter((236, 236, 232), rng, 6)
    base = Image.new("RGB", (SIZE, SIZE), bg)
    primary = _jitter(COLOURS[colours[0]], rng)
    secondary = _jitter(COLOURS[colours[-1]], rng)
    # Fill a full-size canvas with the garment's fabric, then cut it out with the silhouette mask.
    fabric = Image.new("RGB", (SIZE, SIZE), primary)
    draw = ImageDraw.Draw(fabric)
    step = rng.randint(8, 14)
    if pattern == "striped":
        for y in range(0, SIZE, step):
            draw.rectangle([0, y, SIZE, y + step // 2], fill=secondary)
    elif pattern == "checked":
        for y in range(0, SIZE, step):
            for x in range(0, SIZE, step):
                if (x // step + y // step) % 2:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=secondary)
    elif pattern == "dotted":
        r = max(2, step // 4)
        for y in range(step // 2, SIZE, step):
            for x in range(step // 2, SIZE, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=secondary)
    if material is not None:
        _texture(fabric, material, rng)
    mask = Image.new("L", (SIZE, SIZE), 0)
    mdraw = ImageDraw.Draw(mask)
    outline = Image.new("L", (SIZE, SIZE), 0)
    odraw = ImageDraw.Draw(outline)
    for poly in _silhouette(category, rng):
        pts = [(x * SIZE, y * SIZE) for x, y in poly]
        mdraw.polygon(pts, fill=255)
        odraw.polygon(pts, outline=255)
    base.paste(fabric, (0, 0), mask)
    base.paste((60, 60, 60), (0, 0), outline)
    return base


def _texture(fabric: Image.Image, material: str, rng: random.Random) -> None:
    """Draw a material's look on the fabric (only some materials have a visible one)."""
    draw = ImageDraw.Draw(fabric)
    px = fabric.load()
    if material == "denim":
        for k in range(-SIZE, SIZE, 3):
            draw.line([(k, 0), (k + SIZE, SIZE)], fill=(40, 50, 90), width=1)
    elif material == "leather":
        for y in range(SIZE):
            for x in range(SIZE):
                g = 0.5 + 0.5 * math.cos((x - SIZE * 0.35) / 9.0) * math.cos((y - SIZE * 0.3) / 11.0)
                r, gg, b = px[x, y]
                s = int(70 * max(0.0, g - 0.6))
                px[x, y] = (min(255, r + s), min(255, gg + s), min(255, b + s))
    elif material == "wool":
        for _ in range(SIZE * SIZE // 6):
            x, y = rng.randrange(SIZE), rng.randrange(SIZE)
            r, g, b = px[x, y]
            d = rng.choice((-45, 45))
            px[x, y] = (max(0, min(255, r + d)), max(0, min(255, g + d)), max(0, min(255, b + d)))
    elif material == "silk":
        for x in range(SIZE):
            s = int(40 * math.sin(x / 7.0))
            for y in range(SIZE):
                r, g, b = px[x, y]
                px[x, y] = (max(0, min(255, r + s)), max(0, min(255, g + s)), max(0, min(255, b + s)))
    # cotton and polyester look plain


def _write_defects(f, writer: csv.DictWriter, first: dict, out: Path) -> None:
    """One broken row per quarantine reason, appended after the good products."""
    (out / "images" / "BROKEN.png").write_text("this is not an image")
    base = {**first, "title": "Defect row", "description": ""}
    writer.writerow({**base})  # duplicate_id: repeats the first product's id
    writer.writerow({**base, "id": ""})  # missing_id
    writer.writerow({**base, "id": "X000001", "image": "images/NOT_THERE.png"})  # image_missing
    writer.writerow({**base, "id": "X000002", "image": "images/BROKEN.png"})  # image_unreadable
    writer.writerow({**base, "id": "X000003", "image": "../outside.png"})  # image_outside_catalog
    writer.writerow({**base, "id": "X000004", "colour": "teal"})  # label_not_allowed
    writer.writerow({**base, "id": "X000005", "title": "", "image": ""})  # no_text_or_image
    f.write("X000006,a row,with,too few fields\n")  # malformed_row


def _spec_yaml() -> str:
    colours = ", ".join(COLOURS)
    return f"""# Catalog spec for the attrflow demo catalog (written by `attrflow demo-catalog`).
name: demo
source: catalog.csv
id_column: id
title_column: title
description_column: description
image_column: image
attributes:
  - {{name: category, column: category, kind: multiclass, values: [{", ".join(CATEGORIES)}]}}
  - {{name: colour, column: colour, kind: multilabel, separator: "|", values: [{colours}]}}
  - {{name: material, column: material, kind: multiclass, values: [{", ".join(MATERIALS)}]}}
  - {{name: pattern, column: pattern, kind: multiclass, values: [{", ".join(PATTERNS)}]}}
split: {{seed: 0, validation: 0.15, test: 0.15}}
"""
