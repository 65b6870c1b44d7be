"""Batch scoring through `components.inference.Predictor`, the endpoint's and the CLI's scorer.

The dataset is cut into chunks of rows; each chunk is scored by a `Predictor` loaded once per
worker: in this process (`in_process=True`, the reference), or by Ray actors, one per CPU of the
local instance or cluster, each reading the rows and images of its chunks from the dataset folder
itself (on a cluster: ATTRFLOW_HOME on a shared file system, as for the search). Only row ranges
go out and only the prediction columns come back.

Two kinds of input (`features`): `raw` (title, description and image of each row, through the
encoders, as the endpoint scores them) and `embeddings` (the frozen encoders' outputs from the
embedding cache straight into the heads, for models trained on frozen pretrained encoders);
`auto` takes the cache when the model allows it and the cache exists.

Output: one row per product: `id`, per attribute its top value (`<attr>`), that value's score
(`score:<attr>`) and whether it clears its publishing threshold (`published:<attr>`), and the
whole prediction as JSON (`result`, what `Predictor.predict` returns for the product).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from components.catalog.dataset import Dataset


class ScoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    features: Literal["auto", "raw", "embeddings"] = "auto"
    chunk_size: int = Field(512, ge=1)  # rows per Ray task
    batch_size: int = Field(64, ge=1)  # rows per forward pass
    top_k: int = Field(3, ge=1)  # values kept per attribute in `result`
    workers: int | None = Field(None, ge=1)  # Ray actors; default: the cluster's CPUs / cpus_per_worker
    cpus_per_worker: float = Field(1.0, gt=0)


@dataclass
class ScoreResult:
    out: Path
    rows: int
    seconds: float
    features: str  # raw | embeddings
    mode: str  # in-process | ray
    workers: int
    nodes: list[str] = field(default_factory=list)  # the Ray nodes that scored chunks

    @property
    def products_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def resolve_features(model_dir: str | Path, dataset: Dataset, wanted: str) -> str:
    """`raw` or `embeddings`; `embeddings` only for a single model on frozen pretrained encoders."""
    from components.models.io import load_meta

    meta = load_meta(model_dir)
    frozen = "ensemble" not in meta and not meta.get("includes_encoders", True)
    if wanted == "embeddings" and not frozen:
        raise ValueError(
            f"{model_dir}: scoring from cached embeddings needs a model trained on frozen pretrained encoders"
        )
    if wanted != "auto":
        return wanted
    return "embeddings" if frozen and _cache_file(model_dir, dataset).is_file() else "raw"


def _cache_file(model_dir, dataset: Dataset) -> Path:
    from components.features.cache import cache_path
    from components.models.encoders import ImageEncoder, TextEncoder
    from components.models.io import load_meta
    from components.training.trainer import TrainConfig

    model = TrainConfig.model_validate({"model": load_meta(model_dir)["model"]}).model
    return cache_path(dataset, TextEncoder(model.text), ImageEncoder(model.image), with_tokens=False)


class ChunkScorer:
    """A Predictor and the dataset, loaded once; scores row ranges. The Ray actor wraps this class."""

    def __init__(self, model_dir: str, dataset_dir: str, features: str, batch_size: int, top_k: int):
        from components.catalog import load_dataset
        from components.inference.predictor import Predictor

        self.predictor = Predictor(model_dir)
        self.dataset = load_dataset(dataset_dir)
        self.features, self.batch_size, self.top_k = features, batch_size, top_k
        self.encodings = None
        if features == "embeddings":
            from components.features.cache import cached_encodings

            model = self.predictor.model
            self.encodings = cached_encodings(
                self.dataset, model.text_encoder, model.image_encoder, model.needs_tokens, progress=False
            )

    def score(self, start: int, end: int) -> dict[str, list]:
        items = self.dataset.items.iloc[start:end]
        if self.encodings is not None:
            import numpy as np

            from components.inference.predict import describe, predict_items

            pred = predict_items(
                self.predictor.model,
                encodings=self.encodings,
                index=np.arange(start, end),
                batch_size=self.batch_size,
            )
            results = describe(self.predictor.model, self.predictor.thresholds, pred, self.top_k)
            results = [{"id": i, **r} for i, r in zip(items["id"], results, strict=True)]
        else:
            from components.features.images import load_image
            from components.inference.inputs import Product

            products = [
                Product(
                    id=str(r["id"]),
                    title=r["title"] or "",
                    description=r["description"] or "",
                    image=load_image(r["image_path"]) if isinstance(r["image_path"], str) else None,
                )
                for r in items[["id", "title", "description", "image_path"]].to_dict("records")
            ]
            results = self.predictor.predict(products, top_k=self.top_k, batch_size=self.batch_size).results
        return _columns(results, self.predictor.attributes)


def _columns(results: list[dict[str, Any]], attributes: list[str]) -> dict[str, list]:
    out: dict[str, list] = {"id": [str(r["id"]) for r in results]}
    for a in attributes:
        tops = [r["attributes"][a]["values"][0] for r in results]
        out[a] = [t["value"] for t in tops]
        out[f"score:{a}"] = [t["score"] for t in tops]
        out[f"published:{a}"] = [bool(t["published"]) for t in tops]
    out["result"] = [json.dumps({k: v for k, v in r.items() if k != "id"}) for r in results]
    return out


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def score_dataset(
    model_dir: str | Path,
    dataset: Dataset,
    out: str | Path,
    config: ScoreConfig | None = None,
    address: str | None = None,
    in_process: bool = False,
) -> ScoreResult:
    """Score every product of `dataset` with the model in `model_dir`; write Parquet to `out`.

    On Ray by default (a local instance on 127.0.0.1 unless `address` or ATTRFLOW_RAY_ADDRESS
    names a cluster); `in_process=True` scores in this process with one Predictor."""
    config = config or ScoreConfig()
    model_dir, out = Path(model_dir).resolve(), Path(out)
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"{model_dir} is not a saved attrflow model (no config.json)")
    features = resolve_features(model_dir, dataset, config.features)
    chunks = _chunks(len(dataset.items), config.chunk_size)
    start = time.perf_counter()
    args = (str(model_dir), str(Path(dataset.path).resolve()), features, config.batch_size, config.top_k)
    if in_process:
        scorer = ChunkScorer(*args)
        parts, nodes, workers, mode = [scorer.score(s, e) for s, e in chunks], [], 1, "in-process"
    else:
        parts, nodes, workers = _score_on_ray(args, chunks, config, address)
        mode = "ray"
    frame = pd.concat([pd.DataFrame(p) for p in parts], ignore_index=True) if parts else pd.DataFrame()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, out)  # a reader never sees half a file
    return ScoreResult(out, len(frame), time.perf_counter() - start, features, mode, workers, sorted(set(nodes)))


def _score_on_ray(args, chunks, config: ScoreConfig, address: str | None):
    import ray
    from ray.util import ActorPool

    from components.tuning.ray_runtime import ray_session, worker_env

    with ray_session(address, worker_env()):
        cpus = ray.cluster_resources().get("CPU", 1)
        workers = config.workers or max(1, int(cpus // config.cpus_per_worker))
        workers = min(workers, max(1, len(chunks)))
        actor = ray.remote(num_cpus=config.cpus_per_worker)(_RayChunkScorer)
        pool = ActorPool([actor.remote(*args) for _ in range(workers)])
        parts, nodes = [], []
        for part, node in pool.map(lambda a, c: a.score.remote(*c), chunks):  # results in chunk order
            parts.append(part)
            nodes.append(node)
    return parts, nodes, workers


class _RayChunkScorer(ChunkScorer):
    """ChunkScorer in a Ray actor: torch threads = the CPUs Ray gave it; says which node it is on."""

    def __init__(self, *args):
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        torch.set_num_threads(max(1, int(cpus or 1)))
        self.node_id = ray.get_runtime_context().get_node_id()
        super().__init__(*args)

    def score(self, start: int, end: int):  # type: ignore[override]
        return super().score(start, end), self.node_id
