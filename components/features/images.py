"""Product images as PIL images, read the one way training and serving share (no torch here, so the
endpoint's front process can decode images without loading it)."""

from __future__ import annotations

from PIL import Image


def to_rgb(im: Image.Image) -> Image.Image:
    # Transparent product shots are meant to sit on white; a plain convert would expose whatever RGB hides under alpha.
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: str | None) -> Image.Image | None:
    if path is None:
        return None
    with Image.open(path) as im:
        return to_rgb(im)
