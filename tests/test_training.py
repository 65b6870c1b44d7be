"""Training, resume, evaluation and prediction on a small demo catalog."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO
from helpers import predict_one
from safetensors.torch import load_file
from typer.testing import CliRunner

from attrflow.cli import app
from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.evaluation.evaluate import evaluate, predict_split
from components.features.cache import cache_path
from components.inference.predict import predict_items
from components.models.encoders import TextEncoder
from components.models.io import load_model, load_thresholds
from components.training.trainer import TrainConfig, load_train_config, train

TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    spec = write_demo_catalog(root / "catalog", n=160, seed=1)
    result = ingest(load_spec(spec), home=root / "home")
    return load_dataset(result.dataset_dir)


def _config(fusion="modality_attention", frozen=True, epochs=3, **training) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "model": {**TINY, "fusion": {"name": fusion}, "head": {"hidden": 16, "dropout": 0.2}},
            "training": {"frozen": frozen, "epochs": epochs, "batch_size": 16, "patience": 10, **training},
        }
    )


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("frozen", [True, False])
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, demo_dataset, frozen):
    config = _config(frozen=frozen, epochs=3)
    full = train(config, demo_dataset, tmp_path / "full", progress=False)

    def stop_after_two(epoch, record):
        if epoch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(config, demo_dataset, tmp_path / "resumed", on_epoch_end=stop_after_two, progress=False)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2
    torch.manual_seed(12345)  # a different global RNG state must not matter: it is restored
    resumed = train(config, demo_dataset, tmp_path / "resumed", resume=True, progress=False)

    assert resumed.epochs_run == full.epochs_run == 3
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in full.history], abs=1e-6
    )
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_frozen_training_reuses_the_embedding_cache(tmp_path, demo_dataset, monkeypatch):
    train(_config(epochs=1), demo_dataset, tmp_path / "a", progress=False)
    model = load_model(tmp_path / "a")
    path = cache_path(demo_dataset, model.text_encoder, model.image_encoder, with_tokens=False)
    assert path.is_file()
    # A second run with another fusion must not encode again.
    import components.features.cache as cache

    def boom(*a, **k):
        raise AssertionError("encoded again")

    monkeypatch.setattr(cache, "encode_items", boom)
    train(_config("concat", epochs=1), demo_dataset, tmp_path / "b", progress=False)


def test_early_stopping_stops_when_validation_stops_improving(tmp_path, demo_dataset):
    result = train(_config("text", epochs=40, patience=2, lr_head=1e-6), demo_dataset, tmp_path / "m", progress=False)
    assert result.epochs_run < 40
    assert result.epochs_run - result.best_epoch == 2


def test_saved_model_has_thresholds_and_evaluates(tmp_path, demo_dataset):
    result = train(_config("late", epochs=2), demo_dataset, tmp_path / "m", progress=False)
    # The validation scores train() returns are the saved model's.
    again = predict_split(load_model(result.model_dir), result.model_dir, demo_dataset, "validation").probs
    assert set(result.validation_probs) == set(again)
    assert all(np.allclose(result.validation_probs[a], again[a], atol=1e-6) for a in again)
    thresholds = load_thresholds(result.model_dir)
    assert set(thresholds) == {"category", "colour", "material", "pattern"}
    assert len(thresholds["colour"]) == len(demo_dataset.vocab["colour"].values)
    report, paths = evaluate(result.model_dir, demo_dataset, "test")
    assert set(report.attributes) == set(thresholds)
    assert report.attributes["colour"].accuracy is None
    assert report.attributes["category"].accuracy is not None
    assert report.attributes["category"].n == int((demo_dataset.items["split"] == "test").sum())
    assert paths["pr_plot"].stat().st_size > 0 and paths["weights_plot"].stat().st_size > 0
    assert json.loads(paths["json"].read_text())["split"] == "test"


def test_bad_training_config_gives_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  fusion: {name: attention_please}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_train_config(path)


def test_shipped_model_configs_are_valid():
    names = {p.stem for p in (REPO / "configs" / "models").glob("*.yaml")}
    assert {"text", "image", "concat", "modality_attention", "late", "cross_attention"} <= names
    from components.training.extraction import is_extraction_config, load_extraction_config

    extraction = {n for n in names if is_extraction_config(REPO / "configs" / "models" / f"{n}.yaml")}
    assert extraction == {"extraction", "extraction_text"}
    for name in names - extraction:
        load_train_config(REPO / "configs" / "models" / f"{name}.yaml")
    gated = load_extraction_config(REPO / "configs" / "models" / "extraction.yaml")
    assert gated.model.frozen_text and gated.model.global_visual_gate and gated.model.regional_visual_gate
    text = load_extraction_config(REPO / "configs" / "models" / "extraction_text.yaml")
    assert text.model.image is None and not text.model.frozen_text and text.model.category_input


@pytest.mark.slow
def test_real_default_encoders_train_fine_tune_and_predict(tmp_path, demo_dataset):
    """The offline default encoders (MiniLM + EfficientNet-Lite0) and the lexical channel,
    fine-tuned a few steps end to end."""
    config = TrainConfig.model_validate(
        {
            "model": {
                "image": {"image_size": [64, 64]},
                "fusion": {"name": "modality_attention"},
                "lexical": {"buckets": 4096, "dim": 16, "dropout": 0.2},
            },
            "training": {"frozen": False, "epochs": 1, "batch_size": 32},
        }
    )
    before = TextEncoder(config.model.text).state_dict()
    result = train(config, demo_dataset, tmp_path / "m", progress=False)
    model = load_model(result.model_dir)
    after = model.text_encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the encoder was trained
    # The n-grams reach the prediction on this path too: other lexical weights, other scores.
    rows = demo_dataset.items.iloc[:4]
    before_probs = predict_items(model, rows).probs["category"]
    torch.nn.init.normal_(model.lexical.bag.weight, std=1.0)
    assert not np.allclose(predict_items(model, rows).probs["category"], before_probs)
    image = demo_dataset.items.dropna(subset=["image_path"]).iloc[0]
    out = predict_one(result.model_dir, title=image["title"], image=image["image_path"])
    assert set(out["attributes"]) == {"category", "colour", "material", "pattern"}
    w = out["attributes"]["colour"]["modality_weights"]
    assert w["text"] + w["image"] == pytest.approx(1.0, abs=1e-3)
    text_only = predict_one(result.model_dir, title="red cotton t-shirt")
    assert text_only["has_image"] is False
    assert text_only["attributes"]["colour"]["modality_weights"]["text"] == 1.0


def test_cli_train_evaluate_predict(tmp_path, demo_dataset):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(_config("concat", epochs=2).model_dump(mode="json")))  # JSON is YAML
    runner = CliRunner()
    out = runner.invoke(
        app, ["train", str(config), "--dataset", str(demo_dataset.path), "--out", str(tmp_path / "m"), "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.strip().splitlines()[-1])["model_dir"] == str(tmp_path / "m")

    out = runner.invoke(
        app, ["evaluate", str(tmp_path / "m"), "--dataset", str(demo_dataset.path), "--split", "validation", "--json"]
    )
    assert out.exit_code == 0, out.output
    metrics = json.loads(out.output.strip().splitlines()[-1])
    assert set(metrics["attributes"]["category"]) >= {"accuracy", "f1_micro", "f1_macro", "f1_weighted", "r_at_p95"}
    assert metrics["attributes"]["colour"]["accuracy"] is None

    image = demo_dataset.items.dropna(subset=["image_path"]).iloc[0]["image_path"]
    out = runner.invoke(app, ["predict", str(tmp_path / "m"), "--title", "red dress", "--image", image, "--json"])
    assert out.exit_code == 0, out.output
    pred = json.loads(out.output)
    top = pred["attributes"]["category"]["values"][0]
    assert {"value", "score", "threshold", "published"} <= set(top)

    out = runner.invoke(app, ["predict", str(tmp_path / "m"), "--title", "x", "--image", str(tmp_path / "nope.png")])
    assert out.exit_code == 2 and "does not exist" in out.output
    out = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--dataset", str(demo_dataset.path)])
    assert out.exit_code == 2


def test_max_steps_ends_training_within_the_step_budget(tmp_path, demo_dataset):
    result = train(_config("concat", epochs=4, max_steps=5), demo_dataset, tmp_path / "m", progress=False)
    assert result.epochs_run == 1  # 5 steps of 16 are less than one epoch of the demo's training rows
    steps = torch.load(tmp_path / "m" / "checkpoint" / "optimizer.pt", weights_only=True)["scheduler"]["last_epoch"]
    assert steps == 5


def test_init_from_starts_from_a_trained_model(tmp_path, demo_dataset):
    first = train(_config("concat", epochs=2), demo_dataset, tmp_path / "a", progress=False).model_dir
    # A learning rate of ~0 keeps the loaded weights: the second model starts where the first ended.
    second = train(
        _config("concat", epochs=1, lr_head=1e-12, warmup_share=0.0, init_from=str(first)),
        demo_dataset,
        tmp_path / "b",
        progress=False,
    ).model_dir
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    fresh = load_file(
        str(
            train(_config("concat", epochs=1, lr_head=1e-12), demo_dataset, tmp_path / "c", progress=False).model_dir
            / "model.safetensors"
        )
    )
    assert not all(torch.allclose(a[k], fresh[k], atol=1e-6) for k in a)  # without it: a random start
    with pytest.raises(ValueError, match="another model config"):
        train(_config("late", epochs=1, init_from=str(first)), demo_dataset, tmp_path / "d", progress=False)


def test_checkpoint_rng_state_covers_python_numpy_and_torch():
    import random

    import numpy as np

    from components.training.trainer import rng_state, set_rng_state

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    saved = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_a_checkpoint_written_on_a_gpu_resumes_on_a_cpu(tmp_path, demo_dataset, monkeypatch):
    """The optimizer file is written as a CUDA run writes it (every tensor tagged cuda:0)."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA to load a CUDA-tagged file on")
    config = _config(epochs=2)

    def stop_after_one(epoch, record):
        if epoch == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train(config, demo_dataset, tmp_path / "m", on_epoch_end=stop_after_one, progress=False)
    path = tmp_path / "m" / "checkpoint" / "optimizer.pt"
    extra = torch.load(path, weights_only=True)
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save(extra, path)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="CUDA"):  # what a plain torch.load does with it here
        torch.load(path, weights_only=True)
    resumed = train(config, demo_dataset, tmp_path / "m", resume=True, progress=False)
    assert resumed.epochs_run == 2
