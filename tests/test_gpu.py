"""On a CUDA machine (skipped elsewhere): a fine-tuning search asks Ray for one GPU per trial, and
training runs its forward passes under bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import write_demo_catalog
from components.registry import Registry

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU placement is tested on one"),
]

TINY = {"text": {"name": "tiny-random", "max_length": 24}, "image": {"name": "tiny-random", "image_size": [32, 32]}}


def test_finetune_search_places_one_trial_per_gpu(tmp_path):
    from test_tune import _search_file

    from components.tuning import load_search, run_search

    dataset = load_dataset(ingest(load_spec(write_demo_catalog(tmp_path / "catalog", n=80, seed=9))).dataset_dir)
    gpus = torch.cuda.device_count()
    spec = load_search(
        _search_file(
            tmp_path / "search.yaml",
            mode="finetune",
            trials=gpus + 1,  # one more than there are GPUs: it must wait for one
            parameters={"fusion": {"type": "choice", "values": ["text", "concat"]}, "epochs": 1},
        )
    )
    assert spec.resources.gpus_per_trial == "auto"
    registry = Registry()
    registry.register_dataset(dataset.name, dataset.version, str(dataset.path), dataset.manifest)
    parent = registry.start_run("tune", {}, (dataset.name, dataset.version))
    result = run_search(spec, dataset, tmp_path / "out", registry_url=registry.url, parent_run_id=parent)
    trials = registry.list_runs(kind="tune-trial")
    assert len(trials) == gpus + 1 == len(result.trials)
    for t in trials:
        assert t.status == "completed", t.error
        ids = {e["gpus"] for e in t.epoch_metrics}
        assert len(ids) == 1 and len(next(iter(ids)).split(",")) == 1, ids  # exactly one GPU per trial


def test_training_on_cuda_runs_under_bf16_autocast(tmp_path, monkeypatch):
    from components.training.trainer import TrainConfig, train

    seen = []
    real = torch.autocast

    def recording(device_type, dtype=None, *args, **kwargs):
        seen.append((device_type, dtype))
        return real(device_type, dtype, *args, **kwargs)

    monkeypatch.setattr(torch, "autocast", recording)
    dataset = load_dataset(ingest(load_spec(write_demo_catalog(tmp_path / "catalog", n=60, seed=10))).dataset_dir)
    config = TrainConfig.model_validate(
        {
            "model": {**TINY, "fusion": {"name": "concat"}, "head": {"hidden": 16}},
            "training": {"frozen": False, "epochs": 1, "batch_size": 16},
        }
    )
    result = train(config, dataset, tmp_path / "model", progress=False)
    assert ("cuda", torch.bfloat16) in seen
    assert result.epochs_run == 1
