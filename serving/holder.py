"""The model a scorer process serves, and how it is swapped for a new one (no BentoML here).

`ModelHolder` loads the registry's production version of ATTRFLOW_MODEL_NAME (or the folder
ATTRFLOW_MODEL_DIR) into a `Predictor`, warms it up, and keeps it as one reference, `current`.
`check()` compares the registry's production version with the one served; when it differs
(a promotion or a rollback) the new version is loaded and warmed up completely while the old one
keeps scoring, and only then is `current` replaced. A batch reads `current` once, so it is scored
by one model from start to end: no request fails or waits for a swap. A background thread calls
`check()` every ATTRFLOW_POLL_SECONDS; POST /reload calls it at once.

A version that fails to load is not served (the previous one stays) and is not tried again by
the poller until the registry changes or /reload asks for it explicitly.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from serving.schemas import ModelInfo, ScoreItem, ScoreResult
from serving.settings import ServingSettings

if TYPE_CHECKING:
    from components.inference.predictor import Predictor
    from components.registry import Registry

log = logging.getLogger("bentoml.attrflow")  # under "bentoml": BentoML shows these in the server log


class NoModel(RuntimeError):
    """Nothing to score with: no production version yet, or it could not be loaded."""


@dataclass(frozen=True)
class Target:
    """A model to serve: where its files are and what to call it."""

    source: str  # "registry" | "folder" | "bento"
    model_dir: Path
    version: int | None
    record: Any = None  # the registry's ModelVersionRecord
    name: str | None = None  # the model's name when it is not ATTRFLOW_MODEL_NAME (a stored BentoML model's label)

    @property
    def key(self) -> tuple[str, int | None, str]:
        return (self.source, self.version, str(self.model_dir))


@dataclass(frozen=True)
class LoadedModel:
    target: Target
    predictor: Predictor  # or, in the extraction endpoint, a ValueExtractor
    info: ModelInfo


class ModelHolder:
    def __init__(
        self,
        settings: ServingSettings,
        on_swap: Callable[[ModelInfo], None] | None = None,
        on_load_failure: Callable[[], None] | None = None,
        pinned: Target | None = None,
    ) -> None:
        """`pinned`: serve this model and nothing else (e.g. a BentoML model); else the folder
        `settings.model_dir`, else the registry's production version, followed."""
        self.settings = settings
        if pinned is None and settings.model_dir is not None:
            pinned = Target("folder", Path(settings.model_dir).resolve(), None)
        self.pinned = pinned
        self.limits = settings.limits()
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._on_swap = on_swap
        self._on_load_failure = on_load_failure
        self._lock = threading.Lock()  # one load at a time (poller and /reload)
        self._failed: tuple | None = None  # the target that last failed to load
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._registry: Registry | None = None

    # --- life cycle ---

    def start(self) -> None:
        """Load the model now (a failure is logged and leaves the holder not ready), then poll."""
        try:
            self.check()
        except Exception as e:
            log.error("no model loaded at start: %s", e)
        if self.pinned is None and self.settings.poll_seconds > 0:
            self._poller = threading.Thread(target=self._poll, name="model-poller", daemon=True)
            self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
        if self._registry is not None:
            self._registry.close()

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            try:
                self.check()
            except Exception as e:  # logged in check(); the poller keeps going
                log.debug("poll: %s", e)

    # --- the swap ---

    def check(self, force: bool = False) -> bool:
        """Serve the registry's production version (or the configured folder) if it is not the one
        being served; True if the model changed. `force`: retry a version that failed to load
        (and reload a pinned model). Raises NoModel when there is nothing to load or loading failed."""
        with self._lock:
            try:
                target = self._target()
            except Exception as e:
                self.last_error = f"cannot read the registry: {e}"
                log.error("%s", self.last_error)
                raise NoModel(self.last_error) from e
            if target is None:
                if self.current is None:
                    self.last_error = f"the registry has no production version of {self.settings.model_name!r}"
                    raise NoModel(self.last_error)
                return False  # production was cleared: keep serving what we have
            current = self.current
            if current is not None and current.target.key == target.key and not (force and self.pinned is not None):
                return False
            if target.key == self._failed and not force:
                raise NoModel(self.last_error or "the production version failed to load")
            try:
                loaded = self._load(target)
            except Exception as e:
                self._failed = target.key
                self.last_error = f"could not load {self._describe(target)}: {type(e).__name__}: {e}"
                log.exception("%s", self.last_error)
                if self._on_load_failure is not None:
                    self._on_load_failure()
                raise NoModel(self.last_error) from e
            self.current = loaded  # the swap: in-flight batches keep the reference they read
            self._failed, self.last_error = None, None
            log.info(
                "serving %s (was %s)", self._describe(target), self._describe(current.target) if current else "nothing"
            )
            if self._on_swap is not None:
                self._on_swap(loaded.info)
            return True

    def _target(self) -> Target | None:
        if self.pinned is not None:
            return self.pinned
        if self._registry is None:
            from components.registry import Registry

            self._registry = Registry()
        record = self._registry.get_production(self.settings.model_name)
        if record is None:
            return None
        return Target("registry", Path(record.artifact_dir), record.version, record)

    def _describe(self, target: Target) -> str:
        name = target.name or self.settings.model_name
        version = "" if target.version is None else f" v{target.version}"
        if target.source == "registry":
            return f"{name}{version}"
        return f"{name}{version} from {target.model_dir}"

    def _load(self, target: Target) -> LoadedModel:
        predictor, details = self._open(target.model_dir)
        record = target.record
        info = ModelInfo(
            loaded=True,
            name=target.name or self.settings.model_name,
            version=target.version,
            source=target.source,
            metrics=record.metrics if record is not None else _folder_metrics(target.model_dir),
            promoted_at=record.promoted_at if record is not None else None,
            created_at=record.created_at if record is not None else None,
            loaded_at=datetime.now(UTC),
            **details,
        )
        return LoadedModel(target, predictor, info)

    def _open(self, model_dir: Path) -> tuple[Any, dict[str, Any]]:
        """The model to score with, warmed up, and what ModelInfo says about it (`fusion`,
        `attributes`, `image_size`). Here a classifier's `Predictor`; the extraction endpoint's
        holder opens a `ValueExtractor` (serving/extraction.py)."""
        from components.inference.predictor import Predictor

        predictor = Predictor(model_dir, limits=self.limits)
        predictor.warmup()  # first-call costs paid here, not by the first requests after the swap
        h, w = predictor.model.image_encoder.config.image_size
        return predictor, {"fusion": predictor.fusion, "attributes": predictor.attributes, "image_size": (w, h)}

    # --- serving ---

    def info(self) -> ModelInfo:
        current = self.current
        if current is None:
            name = (self.pinned.name if self.pinned else None) or self.settings.model_name
            return ModelInfo(loaded=False, name=name, error=self.last_error)
        return current.info.model_copy(update={"error": self.last_error})

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        """Scores for a batch, all from one model. A product that fails its checks gets an
        `error` instead of failing the others."""
        from components.inference.inputs import InvalidProduct, Product

        model = self.current  # read once: a swap during this batch does not affect it
        if model is None:
            raise NoModel(self.last_error or "no model loaded")
        info = model.info
        results: list[ScoreResult | None] = [None] * len(items)
        products, slots = [], []
        for i, item in enumerate(items):
            try:
                image = None
                if item.pixels is not None:
                    if item.width <= 0 or item.height <= 0 or len(item.pixels) != item.width * item.height * 3:
                        raise InvalidProduct(
                            f"product.image: {len(item.pixels)} bytes of pixels for {item.width}x{item.height} RGB"
                        )
                    image = Image.frombytes("RGB", (item.width, item.height), item.pixels)
                product = Product(title=item.title, description=item.description, image=image)
                product.check(self.limits, "product")
            except ValueError as e:  # InvalidProduct is one
                results[i] = ScoreResult(model_name=info.name, model_version=info.version, error=str(e))
                continue
            products.append(product)
            slots.append(i)
        if products:
            # One forward pass for the whole batch: its size is the adaptive batcher's choice.
            scored = model.predictor.predict(products, top_k=self.settings.top_k, batch_size=len(products))
            keep = self.settings.log_predictions and self.settings.log_embeddings
            text = scored.text_embeddings if keep else None
            image = scored.image_embeddings if keep else None
            for k, (slot, result) in enumerate(zip(slots, scored.results, strict=True)):
                results[slot] = ScoreResult(
                    model_name=info.name,
                    model_version=info.version,
                    image_size=info.image_size,
                    has_image=result["has_image"],
                    attributes=result["attributes"],
                    text_embedding=None if text is None else np.asarray(text[k], dtype=np.float32).tobytes(),
                    image_embedding=None if image is None else np.asarray(image[k], dtype=np.float32).tobytes(),
                )
        return results  # type: ignore[return-value]  # every slot is filled


def _folder_metrics(model_dir: Path) -> dict[str, Any]:
    """A model folder's own metrics, when it has some (evaluation's, else training's validation)."""
    for name in ("metrics.json", "validation_metrics.json"):
        path = model_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            return data if isinstance(data, dict) else {"metrics": data}
    return {}
