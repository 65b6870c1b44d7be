"""Fusion modules, heads, losses and the model, on tiny random encoders."""

from __future__ import annotations

import pytest
import torch

from components.features.encoded import Features
from components.features.lexical import LexicalBatch, hashed_ngrams, product_texts
from components.features.preprocess import encode_labels
from components.models.fusion import FUSIONS, kl_to_uniform
from components.models.io import load_model, save_model
from components.models.model import create_model
from components.training.losses import attribute_loss, supervised_loss

VOCAB = {
    "category": {"kind": "multiclass", "values": ["shirt", "dress", "bag"]},
    "colour": {"kind": "multilabel", "values": ["red", "white", "blue", "black"]},
}
TINY = {"text": {"name": "tiny-random", "max_length": 16}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


def _model(fusion: str, **fusion_kw):
    torch.manual_seed(0)
    return create_model(
        {**TINY, "fusion": {"name": fusion, **fusion_kw}, "head": {"hidden": 16, "dropout": 0.0}}, VOCAB
    )


def _batch(model, n=4, with_image=(True, True, False, True)):
    titles, descriptions = ["red shirt", "white dress with a long description", "bag", ""], ["", "", "", "blue"]
    batch = model.text_encoder.tokenize(titles, descriptions)
    pixels = torch.randn(n, 3, 32, 32)
    has = torch.tensor(with_image)
    batch.update(pixels=pixels * has[:, None, None, None], has_image=has)
    # The lexical channel (on by default where the fusion reads the text) reads the hashed n-grams.
    batch.update(LexicalBatch.from_rows(hashed_ngrams(product_texts(titles, descriptions))).as_dict())
    return batch


def test_registry_has_all_seed_fusions():
    assert set(FUSIONS) >= {"text", "image", "concat", "modality_attention", "late", "cross_attention"}


@pytest.mark.parametrize("fusion", ["text", "image", "concat", "modality_attention", "late", "cross_attention"])
def test_output_shapes_and_missing_image(fusion):
    model = _model(fusion).eval()
    out = model(_batch(model))
    assert out.logits["category"].shape == (4, 3)
    assert out.logits["colour"].shape == (4, 4)
    probs = model.probabilities(out)
    assert torch.allclose(probs["category"].sum(-1), torch.ones(4), atol=1e-5)
    assert torch.isfinite(probs["colour"]).all()
    if out.modality_weights is not None:
        w = out.modality_weights
        assert w.shape == (4, 2, 2)
        assert torch.allclose(w.sum(-1), torch.ones(4, 2), atol=1e-6)  # text + image = 1
        assert torch.all(w[2, :, 0] == 1.0)  # no image: all weight on text


@pytest.mark.parametrize("fusion", ["concat", "modality_attention", "late", "cross_attention"])
def test_prediction_without_image_ignores_the_pixels(fusion):
    """A masked image must not leak: changing the pixels of an image-less product changes nothing."""
    model = _model(fusion).eval()
    batch = _batch(model)
    a = model(batch).logits
    batch["pixels"][2] = torch.randn(3, 32, 32) * 5
    b = model(batch).logits
    for name in a:
        assert torch.allclose(a[name][2], b[name][2], atol=1e-5)
        assert not torch.allclose(a[name][0], a[name][1])  # while products still differ


@pytest.mark.parametrize("fusion", ["concat", "modality_attention", "late", "cross_attention"])
def test_gradients_reach_both_encoders(fusion):
    model = _model(fusion).train()
    batch = _batch(model)
    out = model(batch)
    y = encode_labels_fake()
    loss = supervised_loss(out, y, model.specs) + out.aux_loss
    loss.backward()
    text_grad = sum(p.grad.abs().sum() for p in model.text_encoder.parameters() if p.grad is not None)
    image_grad = sum(p.grad.abs().sum() for p in model.image_encoder.parameters() if p.grad is not None)
    assert text_grad > 0 and image_grad > 0


def encode_labels_fake():
    import pandas as pd

    from components.models.model import Vocab

    items = pd.DataFrame(
        {"category": ["shirt", None, "bag", "dress"], "colour": [["red"], ["white", "blue"], None, ["black"]]}
    )
    return encode_labels(items, {k: Vocab(**v) for k, v in VOCAB.items()})


def test_kl_to_uniform_is_zero_at_uniform_and_positive_otherwise():
    uniform = torch.full((3, 2, 2), 0.5)
    assert torch.allclose(kl_to_uniform(uniform), torch.zeros(3), atol=1e-7)
    skewed = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]]])
    kl = kl_to_uniform(skewed)
    assert (kl > 0).all()
    # by hand: 0.9 ln(1.8) + 0.1 ln(0.2) = 0.36806
    assert kl[0].item() == pytest.approx(
        0.9 * torch.log(torch.tensor(1.8)).item() + 0.1 * torch.log(torch.tensor(0.2)).item(), abs=1e-5
    )


def test_modality_attention_aux_loss_is_lambda_times_kl():
    model = _model("modality_attention", lambda_kl=0.5).eval()
    out = model(_batch(model))
    kl = kl_to_uniform(out.modality_weights)[torch.tensor([True, True, False, True])].mean()
    assert out.aux_loss.item() == pytest.approx(0.5 * kl.item(), rel=1e-5)
    assert _model("modality_attention", lambda_kl=0.0)(_batch(model)).aux_loss.item() == 0.0


def _skewed_attention_after_training(lambda_kl: float) -> float:
    """Train a modality-attention fusion where only the image is informative; return mean |p_img - 0.5|."""
    torch.manual_seed(0)
    from components.models.fusion import ModalityAttentionConfig, create_fusion
    from components.models.heads import HeadConfig, HeadSpec

    fusion = create_fusion(
        ModalityAttentionConfig(lambda_kl=lambda_kl),
        8,
        8,
        [HeadSpec("c", "multiclass", 2)],
        HeadConfig(hidden=0, dropout=0.0),
    )
    opt = torch.optim.Adam(fusion.parameters(), lr=0.05)
    for _ in range(150):
        y = torch.randint(0, 2, (64,))
        image = torch.randn(64, 8) + (y[:, None] * 2.0 - 1.0) * 2.0
        f = Features(text=torch.randn(64, 8), image=image, has_image=torch.ones(64, dtype=torch.bool))
        out = fusion(f)
        loss = torch.nn.functional.cross_entropy(out.logits["c"], y) + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (out.modality_weights[..., 1] - 0.5).abs().mean().item()


def test_large_lambda_pulls_weights_toward_half():
    free = _skewed_attention_after_training(0.0)
    held = _skewed_attention_after_training(10.0)
    assert free > 0.2  # without the regulariser the merger leans hard on the image
    assert held < free / 3


def test_masked_loss_ignores_unlabelled_products():
    logits = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    y = torch.tensor([0, -1, 1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], y[[0, 2]])
    assert attribute_loss(logits, y, "multiclass").item() == pytest.approx(expected.item())
    # changing the unlabelled row's logits changes nothing
    logits2 = logits.clone()
    logits2[1] = torch.tensor([-9.0, 9.0])
    assert attribute_loss(logits2, y, "multiclass").item() == pytest.approx(expected.item())
    ml = torch.tensor([[1.0, -1.0], [3.0, 3.0]])
    y_ml = torch.tensor([[1.0, 0.0], [-1.0, -1.0]])
    expected_ml = torch.nn.functional.binary_cross_entropy_with_logits(ml[:1], y_ml[:1])
    assert attribute_loss(ml, y_ml, "multilabel").item() == pytest.approx(expected_ml.item())
    none = attribute_loss(ml.clone().requires_grad_(), torch.full((2, 2), -1.0), "multilabel")
    assert none.item() == 0.0 and none.requires_grad


@pytest.mark.parametrize("fusion", ["modality_attention", "late", "cross_attention"])
def test_save_load_round_trip_gives_identical_outputs(tmp_path, fusion):
    model = _model(fusion).eval()
    batch = _batch(model)
    before = model(batch)
    save_model(model, tmp_path / "m", thresholds={"category": [0.9, None, 0.5], "colour": [0.8] * 4})
    assert not list((tmp_path / "m").glob("*.pt")) and not list((tmp_path / "m").glob("*.pkl"))
    loaded = load_model(tmp_path / "m")
    after = loaded(batch)
    for name in before.logits:
        assert torch.equal(before.logits[name], after.logits[name])


def test_create_model_rejects_unknown_attribute():
    with pytest.raises(ValueError, match="size"):
        create_model({**TINY, "attributes": ["size"]}, VOCAB)
