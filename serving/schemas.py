"""What the endpoint takes and returns, and what its two services pass each other.

Public input: `ProductInput` (POST /predict: one product, JSON or multipart/form-data) and
`BatchInput` (POST /predict_batch: `{"products": [...]}`, JSON). Both parse the HTTP request
themselves (`from_http_request`, which BentoML calls): a request that cannot be read (malformed
JSON or form data, unknown fields, wrong types, bad base64, too many products, too large a body,
an unsupported content type) never raises into BentoML, where anything but a pydantic error
becomes a 500; it comes back as the input with a `problem` (status, message naming the field) that
the API answers with a 4xx. The messages name the field as `product.title` or, in a batch,
`products[3].title`.

Internal: `ScoreItem` / `ScoreResult` / `ModelInfo` between the front and the scorer (pickled by
BentoML, so raw bytes travel as they are).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Annotated, Any, Literal

import bentoml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
)
from starlette.datastructures import UploadFile

from serving.settings import ServingSettings

if TYPE_CHECKING:
    from starlette.requests import Request

PRODUCT_FIELDS = ("id", "title", "description", "image")


@lru_cache(maxsize=1)
def serving_settings() -> ServingSettings:
    """The process's settings, read once (the environment of `bentoml serve`)."""
    return ServingSettings()


# --- images as base64 ---------------------------------------------------------------------------


def _from_base64(value: Any) -> Any:
    """A base64 string (standard or URL-safe alphabet, padding optional, a `data:...;base64,`
    prefix allowed) -> bytes. Bytes (a multipart file upload) pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ValueError("a data URI must be base64: data:<media type>;base64,<data>")
    text = "".join(text.split())  # line breaks of MIME-style base64
    altchars = b"-_" if ("-" in text or "_" in text) else None
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not valid base64 ({e})") from None


def _valid_unicode(value: str) -> str:
    """JSON may carry unpaired surrogates (`"\\ud800"`), which no encoder, tokenizer or Parquet file takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode (an unpaired surrogate at position {e.start})") from None
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]

Base64Image = Annotated[
    bytes,
    BeforeValidator(_from_base64),
    WithJsonSchema(
        {
            "type": "string",
            "format": "byte",
            "description": "The image file (JPEG, PNG, WebP, ...) as base64; a data URI is accepted. "
            "In multipart/form-data: a file upload.",
        }
    ),
]


# --- request problems ---------------------------------------------------------------------------


class RequestProblem(BaseModel):
    """Why a request cannot be served: the HTTP status and what to tell the client."""

    status: int
    error: str  # the first problem, naming the field
    errors: list[str] = Field(default_factory=list)  # all of them (at most 20)

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "errors": self.errors or [self.error]}


class _Refused(Exception):
    def __init__(self, status: int, *messages: str) -> None:
        self.problem = RequestProblem(status=status, error=messages[0], errors=list(messages[:20]))


def validation_messages(exc: ValidationError, prefix: str = "") -> list[str]:
    """Pydantic's errors as `field.path: what is wrong`, e.g. `products[3].title: ...`."""
    messages = []
    for err in exc.errors(include_url=False, include_input=False):
        path = prefix
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = f"unknown field (a product has {', '.join(PRODUCT_FIELDS)})"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            msg = "expected a JSON object"
        messages.append(f"{path or 'request'}: {msg}")
    return messages or ["request: invalid"]


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _Refused(413, f"request: {int(declared)} bytes, over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"request: over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # what starlette caches, so the body can be read again (e.g. as a form)
    return body


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        raise _Refused(400, "request: empty body (send a JSON object)")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise _Refused(400, "request: malformed JSON (not UTF-8 text)") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; so are huge integers
        raise _Refused(400, f"request: malformed JSON ({e})") from None


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type in ("", "*/*", "text/json") or media_type.endswith("json")


# --- public input -------------------------------------------------------------------------------


class ProductInput(bentoml.IODescriptor):
    """One product: any of title, description and image, but not none of them. `id` is yours,
    echoed back. As JSON, `image` is the image file as base64; as multipart/form-data, the same
    fields with `image` as a file upload. Never a path or a URL."""

    # ser_json_bytes: a Python client (bentoml.SyncHTTPClient) sends the image as base64, as clients must
    model_config = ConfigDict(extra="forbid", title="Product", ser_json_bytes="base64")

    id: Text | None = Field(None, max_length=256, description="Your id for the product, echoed back")
    title: Text = ""
    description: Text = ""
    image: Base64Image | None = None

    _problem: RequestProblem | None = PrivateAttr(None)

    @property
    def problem(self) -> RequestProblem | None:
        return self._problem

    @classmethod
    def refused(cls, problem: RequestProblem) -> ProductInput:
        obj = cls.model_construct()
        obj._problem = problem
        return obj

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> ProductInput:
        settings = serving_settings()
        try:
            body = await _read_body(request, settings.max_request_bytes)
            media_type = _media_type(request)
            if media_type == "application/x-www-form-urlencoded" and body.lstrip().startswith(b"{"):
                media_type = "application/json"  # `curl -d '{...}'` without a content type
            if _is_json(media_type):
                data = _parse_json(body)
            elif media_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
                data = await _form_fields(request, settings)
            else:
                raise _Refused(
                    415,
                    f"request: unsupported content type {media_type!r} (send application/json or multipart/form-data)",
                )
            try:
                return cls.model_validate(data)
            except ValidationError as e:
                raise _Refused(400, *validation_messages(e, "product")) from None
        except _Refused as r:
            return cls.refused(r.problem)


async def _form_fields(request: Request, settings: ServingSettings) -> dict[str, Any]:
    """A multipart (or URL-encoded) form -> the product's fields: text fields as strings, the
    image as the uploaded file's bytes (or a base64 text field)."""
    try:
        form = await request.form(
            max_files=1, max_fields=len(PRODUCT_FIELDS) + 4, max_part_size=settings.max_request_bytes
        )
    except Exception as e:  # starlette's HTTPException / MultiPartException, python-multipart's errors
        raise _Refused(400, f"request: malformed form data ({getattr(e, 'detail', None) or e})") from None
    data: dict[str, Any] = {}
    for key in dict.fromkeys(form.keys()):
        values = form.getlist(key)
        if len(values) > 1:
            raise _Refused(400, f"product.{key}: given {len(values)} times")
        value = values[0]
        if isinstance(value, UploadFile):
            if key != "image":
                raise _Refused(400, f"product.{key}: expected a text field, got a file")
            if value.size is not None and value.size > settings.max_image_bytes:
                raise _Refused(400, f"product.image: {value.size} bytes, over the limit of {settings.max_image_bytes}")
            content = await value.read()
            if not content and not value.filename:
                continue  # a browser's empty file input: no image
            data[key] = content
        else:
            data[key] = value
    return data


class BatchInput(bentoml.IODescriptor):
    """Up to ATTRFLOW_MAX_BATCH products (default 256), each as in /predict (JSON only)."""

    model_config = ConfigDict(extra="forbid", title="Batch")

    products: list[ProductInput] = Field(..., min_length=1, max_length=serving_settings().max_batch)

    _problem: RequestProblem | None = PrivateAttr(None)

    @property
    def problem(self) -> RequestProblem | None:
        return self._problem

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> BatchInput:
        settings = serving_settings()
        try:
            body = await _read_body(request, settings.max_request_bytes)
            media_type = _media_type(request)
            if not _is_json(media_type):
                raise _Refused(
                    415,
                    f"request: unsupported content type {media_type!r} (/predict_batch takes "
                    "application/json; send images as base64)",
                )
            data = _parse_json(body)
            products = data.get("products") if isinstance(data, dict) else None
            if isinstance(products, list) and len(products) > settings.max_batch:
                raise _Refused(400, f"products: {len(products)} products, over the limit of {settings.max_batch}")
            try:
                return cls.model_validate(data)
            except ValidationError as e:
                raise _Refused(400, *validation_messages(e)) from None
        except _Refused as r:
            obj = cls.model_construct(products=[])
            obj._problem = r.problem
            return obj


# --- public output ------------------------------------------------------------------------------


class ModelRef(BaseModel):
    name: str
    version: int | None = Field(description="The registry version; null when a model folder is served")


class ValueScore(BaseModel):
    value: str
    score: float
    threshold: float | None = Field(description="The score this value must reach to be published (null: never)")
    published: bool


class AttributePrediction(BaseModel):
    kind: Literal["multiclass", "multilabel"]
    values: list[ValueScore]
    modality_weights: dict[str, float] | None = None  # {"text": p, "image": 1 - p}, for fusions that have them


class Prediction(BaseModel):
    id: str | None
    model: ModelRef
    has_image: bool
    attributes: dict[str, AttributePrediction]


class PredictResponse(Prediction):
    request_id: str


class BatchResponse(BaseModel):
    request_id: str
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    """The model being served (GET /model)."""

    loaded: bool
    name: str
    version: int | None = None
    source: Literal["registry", "folder", "bento"] | None = None
    fusion: str | None = None
    attributes: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    promoted_at: datetime | None = None
    created_at: datetime | None = None
    loaded_at: datetime | None = None
    image_size: tuple[int, int] | None = Field(None, description="(width, height) the model's images are resized to")
    error: str | None = Field(None, description="Why no model is loaded, or why the last attempt to load one failed")


class ReloadResponse(BaseModel):
    changed: bool
    model: ModelInfo


# --- between the front and the scorer -----------------------------------------------------------


class ScoreItem(BaseModel):
    """One checked product. The image is already decoded and resized to the model's input size
    by the front: raw RGB bytes, row-major, `width` x `height` (a few KB instead of a file)."""

    title: str = ""
    description: str = ""
    pixels: bytes | None = None
    width: int = 0
    height: int = 0


class ScoreResult(BaseModel):
    """One product's scores from the scorer, with the model version that produced them."""

    model_name: str
    model_version: int | None = None
    image_size: tuple[int, int] | None = None  # (width, height) the model wants: the front resizes to it
    has_image: bool = False
    attributes: dict[str, Any] = Field(default_factory=dict)
    text_embedding: bytes | None = None  # float32, for the prediction log
    image_embedding: bytes | None = None
    error: str | None = None  # this product could not be scored (the others in its batch were)
