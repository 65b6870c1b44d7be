"""attrflow's value-extraction endpoint: one BentoML service that loads the model once.

    ATTRFLOW_MODEL_NAME=fashion-values bentoml serve serving.extraction:ExtractionService

    POST /extract   one product, JSON {id?, title, image?} (the image as base64): the values found
                    in its title, each with its character offsets, score and `published` flag
    POST /reload    take the registry's production version now (else on the next poll)
    GET  /model     the model being served; GET /livez /readyz /metrics

The model is the registry's production version of ATTRFLOW_MODEL_NAME (an extraction model, see
configs/models/extraction.yaml), the folder ATTRFLOW_MODEL_DIR, or the model of the Bento this
runs from (the `package` flow's; serving/stored.py). As in the classification
endpoint, serving/holder.py's `ModelHolder` follows the registry (every ATTRFLOW_POLL_SECONDS, and
on /reload) and swaps in a promoted version only once it is loaded and warmed up, and concurrent
requests are extracted together (serving/batching.py, up to ATTRFLOW_BATCH_MAX_SIZE products a
pass). Requests are checked as the classification endpoint checks them (serving/schemas.py): a
bad request gets a 4xx naming the field. ATTRFLOW_API_KEY: the same bearer-key check. Every
answer goes to the prediction log (components.inference.prediction_log, as for classifiers: the
input summary, and per extracted value its attribute, value, score and `published`), unless
ATTRFLOW_LOG_PREDICTIONS=false.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import bentoml
from fastapi import FastAPI
from PIL import Image
from pydantic import BaseModel
from starlette.responses import JSONResponse

from components.inference.extraction import ValueExtractor
from components.inference.inputs import InvalidProduct, Product, decode_image
from components.inference.prediction_log import PredictionLogWriter, input_summary, log_row
from serving.auth import BearerAuth
from serving.batching import NaturalBatcher
from serving.holder import LoadedModel, ModelHolder, NoModel
from serving.schemas import ModelInfo, ProductInput, ReloadResponse, RequestProblem, serving_settings
from serving.stored import pinned_model

SETTINGS = serving_settings()
log = logging.getLogger("bentoml.attrflow")


class ExtractedValue(BaseModel):
    attribute: str
    value: str  # the value the span stands for
    text: str  # the title's text at [start, end)
    start: int
    end: int
    score: float  # mean of 1 - p(O) over the span's tokens
    published: bool  # score >= the attribute's threshold (95% precision on validation)


class ExtractResponse(BaseModel):
    id: str | None
    model: dict[str, Any]  # name, version, folder
    values: list[ExtractedValue]


class ExtractorHolder(ModelHolder):
    """The classification endpoint's holder (registry polling, hot swap, /reload) around a
    `ValueExtractor` instead of a `Predictor`."""

    def _open(self, model_dir: Path) -> tuple[ValueExtractor, dict[str, Any]]:
        extractor = ValueExtractor(model_dir)
        extractor(["warm up"])  # first-call costs paid before the swap, not by the next request
        encoder = extractor.model.image_encoder
        size = None if encoder is None else tuple(reversed(encoder.config.image_size))
        return extractor, {"attributes": extractor.model.attributes, "image_size": size}


# GET /model: BentoML APIs are POST only (as in serving/service.py)
routes = FastAPI(title="attrflow extraction", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.asgi_app(routes, path="/")
@bentoml.service(name="attrflow_extraction", http={"host": "127.0.0.1", "port": 3000})
class ExtractionService:
    def __init__(self) -> None:
        self.holder = ExtractorHolder(SETTINGS, pinned=pinned_model(SETTINGS, ExtractionService))
        self.holder.start()  # loads and warms up the model (or logs why not), then polls the registry
        self.batcher = NaturalBatcher(self._extract_batch, SETTINGS.batch_max_size)
        self.limits = SETTINGS.limits()
        self.writer: PredictionLogWriter | None = SETTINGS.prediction_log()

    def __is_ready__(self) -> bool:
        return self.holder.current is not None

    def _extract_batch(self, items: list[tuple[str, Image.Image | None]]) -> list[tuple[LoadedModel, list[dict]]]:
        model = self.holder.current  # read once: a swap during this batch does not affect it
        if model is None:
            raise NoModel(self.holder.last_error or "no model loaded")
        found = model.predictor([title for title, _ in items], [image for _, image in items])
        return [(model, values) for values in found]

    @bentoml.api(route="/extract")
    async def extract(self, product: ProductInput, /) -> ExtractResponse:
        """The values written in one product's title: `{"id", "title", "image"}` (image: base64)."""
        if product.problem is not None:
            return _refuse(product.problem)  # type: ignore[return-value]
        if not product.title.strip():
            return _refuse(RequestProblem(status=422, error="title: an extraction model reads the title; it is empty"))  # type: ignore[return-value]
        try:
            image = decode_image(product.image, self.limits, "image") if product.image else None
        except InvalidProduct as e:
            return _refuse(RequestProblem(status=422, error=str(e)))  # type: ignore[return-value]
        try:
            [(model, values)] = await self.batcher([(product.title, image)])
        except NoModel as e:
            return _refuse(RequestProblem(status=503, error=f"model unavailable: {e}; retry later"))  # type: ignore[return-value]
        info = model.info
        served = {"name": info.name, "version": info.version, "dir": str(model.target.model_dir)}
        self._log(product, image, info, values)
        return ExtractResponse(id=product.id, model=served, values=[ExtractedValue(**v) for v in values])

    def _log(self, product: ProductInput, image: Image.Image | None, info: ModelInfo, values: list[dict]) -> None:
        """Queue the answer's log row; never fails the request."""
        if self.writer is None:
            return
        try:
            attributes: dict[str, Any] = {}
            for v in values:
                attributes.setdefault(v["attribute"], {"values": []})["values"].append(v)
            row = log_row(
                request_id=uuid4().hex,
                product_index=0,
                product_id=product.id,
                time=datetime.now(UTC),
                model_name=info.name,
                model_version=info.version,
                summary=input_summary(Product(title=product.title, image=image)),
                attributes=attributes,
            )
        except Exception:
            log.exception("prediction log: could not build the row of product %s", product.id)
            return
        self.writer.append([row])

    @bentoml.api(route="/reload")
    async def reload(self) -> ReloadResponse:
        """Check the registry now and, if its production version changed, load it and swap to it."""
        try:  # in a thread: requests keep being answered by the old model while the new one loads
            changed = await anyio.to_thread.run_sync(self.holder.check, True)
        except NoModel:
            changed = False
        return ReloadResponse(changed=changed, model=self.holder.info())

    @routes.get("/model", response_model=ModelInfo)
    async def model(self) -> ModelInfo:
        """The model being served: name, version, attributes, metrics, when it was promoted."""
        return self.holder.info()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.holder.stop()
        if self.writer is not None:
            self.writer.close()


def _refuse(problem: RequestProblem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status)


ExtractionService.add_asgi_middleware(
    BearerAuth, api_key=SETTINGS.api_key.get_secret_value() if SETTINGS.api_key else None
)
