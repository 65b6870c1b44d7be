"""What a client may send for one product, checked without torch: the endpoint's front process
uses this to refuse bad input before anything reaches the model (see predictor.py for scoring)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from components.features.images import to_rgb


class InvalidProduct(ValueError):
    """A product the model cannot score; the message names the field and what is wrong with it."""


class InputLimits(BaseModel):
    """What one product may carry. Images are checked before they are decoded (decompression bombs)."""

    max_title_chars: int = Field(1_000, gt=0)
    max_description_chars: int = Field(20_000, gt=0)
    max_image_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(25_000_000, gt=0)


def decode_image(data: bytes, limits: InputLimits | None = None, field: str = "image") -> Image.Image:
    """Image bytes -> an RGB image, or InvalidProduct naming `field` (too large, not an image)."""
    limits = limits or InputLimits()
    if len(data) > limits.max_image_bytes:
        raise InvalidProduct(f"{field}: {len(data)} bytes, over the limit of {limits.max_image_bytes}")
    if not data:
        raise InvalidProduct(f"{field}: empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                # The header gives the size: refuse before decoding a 1 KB file into gigabytes.
                if im.width * im.height > limits.max_image_pixels:
                    raise InvalidProduct(
                        f"{field}: {im.width}x{im.height} pixels, over the limit of {limits.max_image_pixels}"
                    )
                return to_rgb(im)  # as training reads images (load_image), so the pixels match
    except InvalidProduct:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidProduct(f"{field}: not a readable image ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidProduct(f"{field}: not a readable image ({e})") from None


@dataclass
class Product:
    """One raw product as a seller gives it; any field may be missing, but not all of them."""

    title: str = ""
    description: str = ""
    image: Image.Image | None = None
    id: str | None = None

    def check(self, limits: InputLimits, where: str = "product") -> None:
        if not (self.title.strip() or self.description.strip() or self.image is not None):
            raise InvalidProduct(f"{where}: needs a title, a description or an image")
        if len(self.title) > limits.max_title_chars:
            raise InvalidProduct(
                f"{where}.title: {len(self.title)} characters, over the limit of {limits.max_title_chars}"
            )
        if len(self.description) > limits.max_description_chars:
            raise InvalidProduct(
                f"{where}.description: {len(self.description)} characters, over the limit of {limits.max_description_chars}"
            )
