"""attrflow's value-extraction endpoint: one BentoML service that loads the model once.

    ATTRFLOW_MODEL_NAME=fashion-values bentoml serve serving.extraction:ExtractionService

    POST /extract   one product, JSON {id?, title, image?} (the image as base64): the values found
                    in its title, each with its character offsets, score and `published` flag
    GET  /livez /readyz /metrics

The model is the registry's production version of ATTRFLOW_MODEL_NAME (an extraction model, see
configs/models/extraction.yaml), or the folder ATTRFLOW_MODEL_DIR. Requests are checked as the
classification endpoint checks them (serving/schemas.py): a bad request gets a 4xx naming the
field. ATTRFLOW_API_KEY: the same bearer-key check. Not yet here: hot swap on promotion, batching
of concurrent requests, the prediction log (serving/service.py has them for classifiers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
from pydantic import BaseModel
from starlette.responses import JSONResponse

from components.inference.extraction import ValueExtractor
from components.inference.inputs import InvalidProduct, decode_image
from components.registry import Registry
from serving.auth import BearerAuth
from serving.schemas import ProductInput, RequestProblem, serving_settings

SETTINGS = serving_settings()


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


def _model_dir() -> tuple[Path, dict[str, Any]]:
    if SETTINGS.model_dir is not None:
        return SETTINGS.model_dir, {"name": SETTINGS.model_name, "version": None, "dir": str(SETTINGS.model_dir)}
    with Registry() as registry:
        production = registry.get_production(SETTINGS.model_name)
    if production is None:
        raise RuntimeError(f"model {SETTINGS.model_name!r} has no production version (ATTRFLOW_MODEL_NAME)")
    info = {"name": SETTINGS.model_name, "version": production.version, "dir": str(production.artifact_dir)}
    return Path(production.artifact_dir), info


@bentoml.service(name="attrflow_extraction", http={"host": "127.0.0.1", "port": 3000})
class ExtractionService:
    def __init__(self) -> None:
        model_dir, self.info = _model_dir()
        self.extractor = ValueExtractor(model_dir)
        self.limits = SETTINGS.limits()

    @bentoml.api(route="/extract")
    def extract(self, product: ProductInput, /) -> ExtractResponse:
        """The values written in one product's title: `{"id", "title", "image"}` (image: base64)."""
        if product.problem is not None:
            return _refuse(product.problem)  # type: ignore[return-value]
        if not product.title.strip():
            return _refuse(RequestProblem(status=422, error="title: an extraction model reads the title; it is empty"))  # type: ignore[return-value]
        try:
            image = decode_image(product.image, self.limits, "image") if product.image else None
        except InvalidProduct as e:
            return _refuse(RequestProblem(status=422, error=str(e)))  # type: ignore[return-value]
        [values] = self.extractor([product.title], [image])
        return ExtractResponse(id=product.id, model=self.info, values=[ExtractedValue(**v) for v in values])


def _refuse(problem: RequestProblem) -> JSONResponse:
    return JSONResponse(problem.body(), status_code=problem.status)


ExtractionService.add_asgi_middleware(
    BearerAuth, api_key=SETTINGS.api_key.get_secret_value() if SETTINGS.api_key else None
)
