"""attrflow's endpoint: two BentoML services, a front and a scorer.

    ATTRFLOW_MODEL_NAME=demo bentoml serve serving.service:AttributeService   # http://127.0.0.1:3000

`AttributeService` (the front, the public HTTP API):

    POST /predict        one product: JSON {id?, title?, description?, image?} with the image as
                         base64, or multipart/form-data with the image as a file upload
    POST /predict_batch  {"products": [...]}: up to ATTRFLOW_MAX_BATCH products (JSON)
    POST /predict_by_id  {"ids": [...]}: catalog products by id, features from Feast's online store
                         (serving/by_id.py; unknown ids come back as `not_found`)
    GET  /model          the model served: name, version, fusion, metrics, when it was promoted
    POST /reload         check the registry now and swap to its production version
    GET  /livez /readyz /metrics   BentoML's health checks and Prometheus metrics

`Scorer` holds the model (`serving.holder.ModelHolder`: a `Predictor`, hot-swapped when the
registry's production version changes) and has one API, `score`. The model is the registry's
production version of ATTRFLOW_MODEL_NAME, unless one is pinned: ATTRFLOW_BENTO_MODEL (a BentoML
model tag), ATTRFLOW_MODEL_DIR (a folder), or, run from a Bento built by the `package` flow, the
model packed into it.

Why two services. The front validates each request and calls `await self.scorer.to_async.score(items)`
(`bentoml.depends`); the scorer scores concurrent calls together (serving/batching.py: while one
forward pass runs, the calls that arrive queue up, and the next pass takes them all, up to
ATTRFLOW_BATCH_MAX_SIZE products; a lone request is never held). /predict_batch sends its
products as concurrent calls of at most that size (several scorer workers share them). Under `bentoml serve` the two run as separate processes
(ATTRFLOW_API_WORKERS and ATTRFLOW_WORKERS of them) talking over a local socket with pickled
payloads, so the work is split to keep the scorer, the bottleneck, doing nothing but scoring:

- the front refuses bad input with a 4xx (serving.schemas: JSON / form parsing, types, unknown
  fields, base64, sizes; then `decode_image` and `Product.check` with the configured limits), so a
  bad product never reaches, let alone fails, a batch it would share with other requests;
- the front decodes the image and resizes it to the model's input size (the resize the model's
  own preprocessing does, which then has nothing left to do: the scores are those of an in-process
  `Predictor`), so a few KB of raw RGB travel instead of the upload, and decoding, which is CPU
  work, runs in the front's threads, in parallel with the model;
- the front writes the prediction log (components.inference.prediction_log: a queue and a writer
  thread; the scorer returns the pooled embeddings with the scores).

Hot swap: each scorer worker polls the registry (ATTRFLOW_POLL_SECONDS) and swaps to a new
production version after loading and warming it up, between batches (serving/holder.py); POST
/reload makes the scorer worker that takes it check at once (with several scorer workers, the
others follow at their next poll).

Torch threads: each scorer worker uses cores // workers (ATTRFLOW_TORCH_THREADS overrides), so the
scorers never ask for more cores than there are. Telemetry: see serving/__init__.py. The server
binds 127.0.0.1 unless told otherwise (`--host`, or BENTOML_HOST=0.0.0.0 in a container).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from http import HTTPStatus
from types import SimpleNamespace
from typing import Annotated, Any
from uuid import uuid4

import aiohttp
import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable
from fastapi import FastAPI
from PIL import Image
from pydantic import Field
from starlette.responses import JSONResponse

from components.inference.inputs import InvalidProduct, Product, decode_image
from components.inference.prediction_log import PredictionLogWriter, input_summary, log_row
from components.memory import keep_freed_memory
from serving.auth import BearerAuth
from serving.batching import NaturalBatcher
from serving.by_id import ByIdResponse, IdPrediction, OnlineScorer
from serving.holder import ModelHolder, NoModel
from serving.schemas import (
    BatchInput,
    BatchResponse,
    ModelInfo,
    ModelRef,
    Prediction,
    PredictResponse,
    ProductInput,
    ReloadResponse,
    RequestProblem,
    ScoreItem,
    ScoreResult,
    Text,
    serving_settings,
)
from serving.stored import pinned_model

log = logging.getLogger("bentoml.attrflow")  # under "bentoml": BentoML shows these in the server log
SETTINGS = serving_settings()  # read at import: the services' configuration depends on it


@lru_cache(maxsize=1)
def service_metrics() -> SimpleNamespace:
    """attrflow's own Prometheus metrics, created once per process, inside the worker (after
    BentoML has pointed prometheus_client at its multiprocess folder), so /metrics shows the sum
    over all processes."""
    from prometheus_client import Counter, Histogram

    return SimpleNamespace(
        products=Counter("attrflow_products", "Products scored, by endpoint", ["endpoint"]),
        batch_products=Histogram(
            "attrflow_scorer_batch_products",
            "Products in one forward pass of the model (the adaptive batch, in products)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        ),
        swaps=Counter("attrflow_model_swaps", "New model versions loaded and swapped in"),
        load_failures=Counter("attrflow_model_load_failures", "Model versions that failed to load"),
        log_rows=Counter("attrflow_prediction_log_rows", "Prediction log rows written to Parquet"),
        log_failures=Counter(
            "attrflow_prediction_log_failures",
            "Prediction log rows lost (queue_full, write_error, build_error, closed)",
            ["reason"],
        ),
    )


# --- the scorer ---------------------------------------------------------------------------------


BY_ID_CALL = 32  # ids per scorer call of /predict_by_id (no encoder runs: larger calls gain little)


@bentoml.service(
    name="attrflow_scorer",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.timeout_seconds},
    # BentoML 1.4's client for a dependency replaces its connection pool every 100 requests (or
    # 300 s) and closes the old one under the requests still in flight, which then fail ("Server
    # disconnected"). The scorer is a local socket: keep one pool for the life of the process.
    runner_connection={"max_requests": 2**62, "max_age": 1e12},
)
class Scorer:
    """Holds the model and scores batches of checked products (internal: the front calls it)."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(SETTINGS.threads_per_worker)
        if SETTINGS.keep_freed_memory:  # ~1.5x products/s on CPU: no fresh zeroed pages per forward pass
            keep_freed_memory()
        self.metrics = service_metrics()
        self.holder = ModelHolder(
            SETTINGS,
            on_swap=lambda _info: self.metrics.swaps.inc(),
            on_load_failure=self.metrics.load_failures.inc,
            pinned=pinned_model(SETTINGS, Scorer),
        )
        self.holder.start()  # loads and warms up the model (or logs why not), then polls the registry
        # Concurrent calls are scored together, one forward pass at a time (serving/batching.py).
        self.batcher = NaturalBatcher(self.holder.score, SETTINGS.batch_max_size, self.metrics.batch_products.observe)
        self.online = OnlineScorer()  # /predict_by_id: the feature store, opened on first use

    def __is_ready__(self) -> bool:
        return self.holder.current is not None

    @bentoml.api
    async def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        try:
            return await self.batcher(items)
        except NoModel as e:
            raise ServiceUnavailable(str(e)) from None

    @bentoml.api
    async def score_ids(self, ids: list[str]) -> list[IdPrediction]:
        """Products by catalog id, their features from the online store (serving/by_id.py)."""
        model = self.holder.current  # read once: a swap during this call does not affect it
        if model is None:
            raise ServiceUnavailable(self.holder.last_error or "no model loaded")
        ref = ModelRef(name=model.info.name, version=model.info.version)
        return await anyio.to_thread.run_sync(self.online.score, model.predictor, ref, ids, self.holder.settings.top_k)

    @bentoml.api
    async def info(self) -> ModelInfo:
        return self.holder.info()

    @bentoml.api
    async def reload(self) -> ReloadResponse:
        # In a thread outside BentoML's limiter: batches keep being scored while the new model loads.
        try:
            changed = await anyio.to_thread.run_sync(self.holder.check, True)
        except NoModel:
            changed = False
        return ReloadResponse(changed=changed, model=self.holder.info())

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.holder.stop()


# --- the front ----------------------------------------------------------------------------------

# GET routes: BentoML APIs are POST only, so /model is a FastAPI route mounted on the front
# (BentoML binds `self` to the service instance). Its own docs pages are off: /docs.json is BentoML's.
routes = FastAPI(title="attrflow", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass
class _Prepared:
    where: str  # "product" or "products[i]", for messages
    id: str | None
    summary: dict[str, Any] | None  # for the prediction log
    item: ScoreItem


def _refuse(problem: RequestProblem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status)


def _unavailable(detail: str) -> JSONResponse:
    return _refuse(RequestProblem(status=503, error=f"model unavailable: {detail}; retry later"))


@bentoml.asgi_app(routes, path="/")
@bentoml.service(
    name="attrflow",
    workers=SETTINGS.api_workers,
    http={"host": "127.0.0.1", "port": 3000},
    traffic={"timeout": SETTINGS.timeout_seconds},
)
class AttributeService:
    """Attribute predictions for products: title, description and image in; per attribute the top
    values with scores, thresholds and whether each is confident enough to publish out."""

    scorer = bentoml.depends(Scorer)

    def __init__(self) -> None:
        self.limits = SETTINGS.limits()
        self.metrics = service_metrics()
        self._image_size: tuple[int, int] | None = None  # (width, height) of the model served
        self.writer: PredictionLogWriter | None = SETTINGS.prediction_log(
            on_dropped=lambda reason, rows: self.metrics.log_failures.labels(reason).inc(rows),
            on_written=self.metrics.log_rows.inc,
        )

    async def __is_ready__(self) -> bool:
        """Ready when the scorer has a model loaded and warmed up."""
        try:
            info = await self.scorer.to_async.info()
        except Exception:
            return False
        if info.loaded and info.image_size:
            self._image_size = tuple(info.image_size)
        return info.loaded

    @bentoml.api(route="/predict")
    async def predict(self, product: ProductInput, /) -> PredictResponse:
        """Attributes of one product. JSON: `{"id", "title", "description", "image"}` with the image
        file as base64, or multipart/form-data with the same fields and `image` as a file upload."""
        if product.problem is not None:
            return _refuse(product.problem)  # type: ignore[return-value]
        served = await self._serve([product], "predict")
        if isinstance(served, JSONResponse):
            return served  # type: ignore[return-value]
        request_id, [prediction] = served
        return PredictResponse(request_id=request_id, **dict(prediction))

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, batch: BatchInput, /) -> BatchResponse:
        """Attributes of up to ATTRFLOW_MAX_BATCH products in one request: `{"products": [...]}`,
        each as in /predict (JSON, images as base64). Predictions come back in request order."""
        if batch.problem is not None:
            return _refuse(batch.problem)  # type: ignore[return-value]
        served = await self._serve(batch.products, "predict_batch")
        if isinstance(served, JSONResponse):
            return served  # type: ignore[return-value]
        request_id, predictions = served
        return BatchResponse(request_id=request_id, predictions=predictions)

    @bentoml.api(route="/predict_by_id")
    async def predict_by_id(
        self,
        ids: Annotated[
            list[Annotated[Text, Field(max_length=256)]], Field(min_length=1, max_length=SETTINGS.max_batch)
        ],
    ) -> ByIdResponse:
        """Attributes of catalog products by id (`{"ids": [...]}`, up to ATTRFLOW_MAX_BATCH): their
        features come from Feast's online store, scored from the stored embeddings when the model's
        encoders match them, else from the stored text and image. Unknown ids: `status: not_found`."""
        try:
            # in calls of BY_ID_CALL ids, concurrently: several scorer workers share a large request
            predictions = await _in_calls(self.scorer.to_async.score_ids, ids, BY_ID_CALL)
        except BentoMLException as e:
            if e.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
                return _unavailable("the scorer has no model loaded or is overloaded")  # type: ignore[return-value]
            raise
        except aiohttp.ClientConnectionError:
            return _unavailable("the scorer cannot be reached")  # type: ignore[return-value]
        self.metrics.products.labels("predict_by_id").inc(len(ids))
        return ByIdResponse(request_id=uuid4().hex, predictions=predictions)

    @bentoml.api(route="/reload")
    async def reload(self) -> ReloadResponse:
        """Check the registry now and, if its production version changed, load it and swap to it
        (in the scorer worker that takes this call; the others on their next poll)."""
        result = await self.scorer.to_async.reload()
        if result.model.loaded and result.model.image_size:
            self._image_size = tuple(result.model.image_size)
        return result

    @routes.get("/model", response_model=ModelInfo)
    async def model(self) -> ModelInfo:
        """The model being served: name, version, fusion, metrics, when it was promoted."""
        return await self.scorer.to_async.info()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        if self.writer is not None:
            self.writer.close()

    # --- the request path ---

    async def _serve(self, products: list[ProductInput], endpoint: str) -> tuple[str, list[Prediction]] | JSONResponse:
        request_id, received = uuid4().hex, datetime.now(UTC)
        size = await self._model_image_size()
        if size is None:
            return _unavailable("no model is loaded")
        try:
            prepared = await anyio.to_thread.run_sync(self._prepare, products, size, endpoint == "predict")
        except _Invalid as e:
            return _refuse(RequestProblem(status=400, error=e.messages[0], errors=e.messages[:20]))
        try:
            results = await self._score([p.item for p in prepared])
        except BentoMLException as e:
            if e.error_code == HTTPStatus.SERVICE_UNAVAILABLE:
                return _unavailable("the scorer has no model loaded or is overloaded")
            raise
        except aiohttp.ClientConnectionError:
            return _unavailable("the scorer cannot be reached")
        refused = [r.error.replace("product", p.where, 1) for p, r in zip(prepared, results, strict=True) if r.error]
        if refused:  # the front checks the same limits first, so this is a safety net
            return _refuse(RequestProblem(status=400, error=refused[0], errors=refused[:20]))
        if results and results[-1].image_size:
            self._image_size = tuple(results[-1].image_size)  # follows a swap to a model with another size
        predictions = [
            Prediction(
                id=p.id,
                model=ModelRef(name=r.model_name, version=r.model_version),
                has_image=r.has_image,
                attributes=r.attributes,
            )
            for p, r in zip(prepared, results, strict=True)
        ]
        self.metrics.products.labels(endpoint).inc(len(predictions))
        self._log(request_id, received, prepared, results)
        return request_id, predictions

    async def _score(self, items: list[ScoreItem], attempts: int = 3) -> list[ScoreResult]:
        """The scorer's `score`. More products than one forward pass takes go as concurrent calls of
        a pass each: one call holds one connection, which stays with one scorer worker, so a large
        /predict_batch on one call would leave the other workers idle (make bench-serving)."""
        return await _in_calls(lambda part: self._score_call(part, attempts), items, SETTINGS.batch_max_size)

    async def _score_call(self, items: list[ScoreItem], attempts: int) -> list[ScoreResult]:
        """One call, tried again when the connection drops before the answer (a scorer worker
        restarting; scoring has no side effects, so a retry is safe)."""
        for attempt in range(attempts):
            try:
                return await self.scorer.to_async.score(items)
            except aiohttp.ClientConnectionError as e:
                if attempt == attempts - 1:
                    raise
                log.warning("scorer connection lost (%s); trying again", e)
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _model_image_size(self) -> tuple[int, int] | None:
        if self._image_size is None:
            await self.__is_ready__()
        return self._image_size

    def _prepare(self, products: list[ProductInput], size: tuple[int, int], single: bool) -> list[_Prepared]:
        """Decode and check every product (all problems reported, by index), summarise it for
        the log, resize its image to the model's input size. In a worker thread."""
        prepared, problems = [], []
        for i, given in enumerate(products):
            where = "product" if single else f"products[{i}]"
            try:
                image = None if given.image is None else decode_image(given.image, self.limits, f"{where}.image")
                product = Product(title=given.title, description=given.description, image=image, id=given.id)
                product.check(self.limits, where)
            except InvalidProduct as e:
                problems.append(str(e))
                continue
            except Exception as e:  # an image decoder failing in a way decode_image does not expect
                log.warning("%s.image: the decoder raised %s", where, type(e).__name__, exc_info=True)
                problems.append(f"{where}.image: not a readable image ({type(e).__name__})")
                continue
            summary = self._summary(product) if self.writer is not None else None
            item = ScoreItem(title=product.title, description=product.description)
            if image is not None:
                # What the model's preprocessing does (components.features.preprocess.image_pixels).
                small = image if image.size == size else image.resize(size, Image.BILINEAR)
                item.pixels, (item.width, item.height) = small.tobytes(), small.size
            prepared.append(_Prepared(where, given.id, summary, item))
        if problems:
            raise _Invalid(problems)
        return prepared

    def _summary(self, product: Any) -> dict[str, Any] | None:
        try:
            return input_summary(product)
        except Exception:  # the log loses the summary, the request goes on
            log.exception("prediction log: no input summary")
            return None

    def _log(self, request_id: str, received: datetime, prepared: list[_Prepared], results: list[ScoreResult]) -> None:
        """Queue the log rows; never fails the request (a failure is counted on /metrics)."""
        if self.writer is None:
            return
        try:
            rows = [
                log_row(
                    request_id=request_id,
                    product_index=i,
                    product_id=p.id,
                    time=received,
                    model_name=r.model_name,
                    model_version=r.model_version,
                    summary=p.summary or {},
                    attributes=r.attributes,
                    text_embedding=_vector(r.text_embedding),
                    image_embedding=_vector(r.image_embedding),
                )
                for i, (p, r) in enumerate(zip(prepared, results, strict=True))
            ]
        except Exception:
            log.exception("prediction log: could not build the rows of request %s", request_id)
            self.metrics.log_failures.labels("build_error").inc(len(prepared))
            return
        self.writer.append(rows)


AttributeService.add_asgi_middleware(
    BearerAuth, api_key=SETTINGS.api_key.get_secret_value() if SETTINGS.api_key else None
)


async def _in_calls(call, items: list, size: int) -> list:
    """`call` on `items` in concurrent calls of at most `size` (one call holds one connection to
    one scorer worker), the results in order; a single call when they fit in one."""
    if len(items) <= size:
        return await call(items)
    parts = await asyncio.gather(*(call(items[i : i + size]) for i in range(0, len(items), size)))
    return [result for part in parts for result in part]


class _Invalid(Exception):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(messages[0])
        self.messages = messages


def _vector(data: bytes | None) -> np.ndarray | None:
    return None if data is None else np.frombuffer(data, dtype=np.float32)
