"""The model/training options added for the fashion quality benchmark: multi-scale image pooling,
logit-adjusted loss, label smoothing. Defaults keep the previous behaviour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.features.lexical import LexicalBatch, hashed_ngrams
from components.models.encoders import ImageEncoder, ImageEncoderConfig
from components.models.fusion import FusionOutput
from components.models.heads import HeadSpec
from components.models.io import load_model, save_model
from components.models.model import create_model
from components.training.losses import attribute_loss, log_class_priors, supervised_loss
from components.training.trainer import TrainConfig, train

TINY_IMAGE = {"name": "tiny-random", "image_size": [32, 32]}
VOCAB = {"category": {"kind": "multiclass", "values": ["a", "b", "c"]}}


def test_multi_scale_pooling_appends_earlier_stages():
    plain = ImageEncoder(ImageEncoderConfig(**TINY_IMAGE))
    multi = ImageEncoder(ImageEncoderConfig(**TINY_IMAGE, extra_stages=[0, 1], extra_grid=2))
    info = multi.model.feature_info
    assert multi.token_dim == plain.dim == plain.token_dim
    assert multi.dim == plain.dim + 4 * (info[0]["num_chs"] + info[1]["num_chs"])
    x = torch.randn(2, 3, 32, 32)
    a, b = plain(x), multi(x)
    assert b.pooled.shape == (2, multi.dim)
    assert torch.allclose(b.pooled[:, : plain.dim], a.pooled, atol=1e-5)  # the last stage's pool comes first
    assert b.tokens.shape == a.tokens.shape  # region tokens are unchanged
    # A different feature must not share the default's embedding cache; the default identity is unchanged.
    assert multi.identity != plain.identity and plain.identity == "image:tiny-random:32x32"
    with pytest.raises(ValueError, match="extra_stages"):
        ImageEncoder(ImageEncoderConfig(**TINY_IMAGE, extra_stages=[99]))


@pytest.mark.parametrize("fusion", ["concat", "modality_attention", "cross_attention"])
def test_models_with_multi_scale_pooling_run_save_and_load(tmp_path, fusion):
    config = {
        "text": {"name": "tiny-random", "max_length": 16},
        "image": {**TINY_IMAGE, "extra_stages": [1], "extra_grid": 1},
        "fusion": {"name": fusion},
        "head": {"hidden": 8},
    }
    model = create_model(config, VOCAB).eval()
    batch = {**model.text_encoder.tokenize(["red shirt", "blue jeans"], ["", ""])}
    batch["pixels"], batch["has_image"] = torch.randn(2, 3, 32, 32), torch.tensor([True, False])
    batch.update(LexicalBatch.from_rows(hashed_ngrams(["red shirt", "blue jeans"])).as_dict())  # lexical: on by default
    out = model(batch)
    assert out.logits["category"].shape == (2, 3)
    save_model(model, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert torch.allclose(again(batch).logits["category"], out.logits["category"], atol=1e-5)


def test_logit_adjusted_loss_and_label_smoothing():
    logits = torch.randn(6, 3)
    y = torch.tensor([0, 0, 0, 0, 1, -1])
    prior = log_class_priors(y, 3, tau=1.0, smoothing=1.0)
    assert torch.allclose(prior.exp(), torch.tensor([5.0, 2.0, 1.0]) / 8)
    keep = y >= 0
    assert torch.isclose(
        attribute_loss(logits, y, "multiclass", log_prior=prior), F.cross_entropy(logits[keep] + prior, y[keep])
    )
    assert torch.isclose(
        attribute_loss(logits, y, "multiclass", label_smoothing=0.1),
        F.cross_entropy(logits[keep], y[keep], label_smoothing=0.1),
    )
    # The defaults are plain cross-entropy, and supervised_loss passes the options through.
    spec = [HeadSpec("category", "multiclass", 3)]
    out = FusionOutput({"category": logits}, torch.zeros(()))
    assert torch.isclose(supervised_loss(out, {"category": y}, spec), F.cross_entropy(logits[keep], y[keep]))
    assert torch.isclose(
        supervised_loss(out, {"category": y}, spec, 0.0, {"category": prior}),
        F.cross_entropy(logits[keep] + prior, y[keep]),
    )
    # The adjusted loss prefers a rarer class more: its optimum logits favour class 2 over plain CE's.
    assert prior[2] < prior[0]


def test_training_with_the_new_options(tmp_path):
    spec = write_demo_catalog(tmp_path / "catalog", n=120, seed=2)
    ds = load_dataset(ingest(load_spec(spec), home=tmp_path / "home").dataset_dir)
    config = TrainConfig.model_validate(
        {
            "model": {
                "text": {"name": "tiny-random", "max_length": 16},
                "image": {**TINY_IMAGE, "extra_stages": [0, 1], "extra_grid": 2},
                "fusion": {"name": "concat"},
                "head": {"hidden": 8},
            },
            "training": {
                "epochs": 2,
                "batch_size": 16,
                "logit_adjust_tau": 1.0,
                "label_smoothing": 0.1,
                "image_dropout": 0.3,
            },
        }
    )
    result = train(config, ds, tmp_path / "m", progress=False)
    assert result.epochs_run == 2 and all(h["train_loss"] > 0 for h in result.history)
    assert TrainConfig().training.logit_adjust_tau == 0.0 and TrainConfig().training.label_smoothing == 0.0


def test_image_dropout_hides_images_during_training_only():
    from components.training.trainer import _drop_images

    has = torch.ones(1000, dtype=torch.bool)
    assert torch.equal(_drop_images(has, 0.5, None), has)  # off without a generator
    dropped = _drop_images(has, 0.5, torch.Generator().manual_seed(0))
    assert 400 < int((~dropped).sum()) < 600
    again = _drop_images(has, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)  # a function of the seed: resume stays exact
    no_image = torch.zeros(10, dtype=torch.bool)
    assert not _drop_images(no_image, 0.5, torch.Generator().manual_seed(0)).any()  # never invents an image
    assert TrainConfig().training.image_dropout == 0.0
