"""The endpoint's settings, read from `ATTRFLOW_*` environment variables (pydantic-settings).

    ATTRFLOW_MODEL_NAME=demo bentoml serve serving.service:AttributeService

Which model: the registry's production version of ATTRFLOW_MODEL_NAME (followed as it changes),
or a fixed model folder, ATTRFLOW_MODEL_DIR, or a model in BentoML's store, ATTRFLOW_BENTO_MODEL
(what a Bento built by the `package` flow serves). Where data lives (the registry, the prediction log)
comes from `components.settings` (ATTRFLOW_HOME, ATTRFLOW_DB_URL).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from components.inference.prediction_log import PredictionLogWriter


def available_cores() -> int:
    """The CPU cores this process may use (its affinity mask, which containers narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATTRFLOW_", extra="ignore", protected_namespaces=())

    # --- which model -------------------------------------------------------------------------
    model_name: str = "demo"  # ATTRFLOW_MODEL_NAME: the registry name (and the prediction log's folder)
    model_dir: Path | None = None  # ATTRFLOW_MODEL_DIR: serve this folder instead of the registry
    # ATTRFLOW_BENTO_MODEL: serve this BentoML model (a registered version stored by the `package`
    # flow, `attrflow-<name>:v<version>`, packed into the Bento) instead of the registry
    bento_model: str | None = None
    poll_seconds: float = Field(30.0, ge=0)  # how often the registry is checked; 0: only on POST /reload

    # --- requests ----------------------------------------------------------------------------
    max_batch: int = Field(256, ge=1)  # products in one /predict_batch request
    top_k: int = Field(3, ge=1, le=100)  # values returned per attribute
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # a larger request body gets 413
    # InputLimits (components.inference.predictor), checked before anything is decoded or scored
    max_title_chars: int = Field(1_000, gt=0)
    max_description_chars: int = Field(20_000, gt=0)
    max_image_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(25_000_000, gt=0)
    api_key: SecretStr | None = None  # ATTRFLOW_API_KEY: when set, `Authorization: Bearer <key>` is required

    # --- batching (serving/batching.py) -----------------------------------------------------
    # Products the model scores in one forward pass: concurrent requests are gathered up to this.
    # On 2 CPU cores the frozen models score fastest per product at 16 (make bench-serving, "In
    # process"); larger passes are slower per product there. Raise it on a GPU.
    batch_max_size: int = Field(16, ge=1)

    # --- processes and threads ---------------------------------------------------------------
    # Scorer processes, each with its own copy of the model. One process tops out at ~1.3 cores
    # (its event loop and the GIL around the forward passes), so two on a 2-core machine reach
    # 0.9x the in-process ceiling at concurrency 64 where one reaches 0.65x, for ~1.1 GB more
    # memory (make bench-serving, docs/results.md). POST /reload reaches one worker; the others
    # follow at their next registry poll.
    workers: int = Field(default_factory=lambda: min(2, available_cores()), ge=1)
    api_workers: int = Field(1, ge=1)  # front processes (validation, image decoding, the prediction log)
    torch_threads: int | None = Field(None, ge=1)  # per scorer worker; default: cores // workers
    # glibc keeps freed memory in each scorer (components/memory.py): ~1.5x faster forward passes
    # on CPU, for the scorer's peak memory staying resident.
    keep_freed_memory: bool = True
    timeout_seconds: float = Field(60.0, gt=0)  # per request

    # --- prediction log ----------------------------------------------------------------------
    log_predictions: bool = True  # append every served prediction to ATTRFLOW_HOME/predictions/<model>/
    log_embeddings: bool = True  # ... with the pooled text and image embeddings
    log_flush_seconds: float = Field(5.0, gt=0)  # the longest a row waits in memory before it is written
    log_queue_rows: int = Field(100_000, ge=1)  # rows waiting to be written; beyond that rows are dropped (counted)

    @property
    def threads_per_worker(self) -> int:
        """Torch intra-op threads per scorer worker, so that workers x threads <= cores."""
        return self.torch_threads or max(1, available_cores() // self.workers)

    def limits(self):  # -> components.inference.inputs.InputLimits
        from components.inference.inputs import InputLimits

        return InputLimits(
            max_title_chars=self.max_title_chars,
            max_description_chars=self.max_description_chars,
            max_image_bytes=self.max_image_bytes,
            max_image_pixels=self.max_image_pixels,
        )

    def prediction_log(self, on_dropped=None, on_written=None) -> PredictionLogWriter | None:
        """The endpoint's prediction log writer (ATTRFLOW_HOME/predictions), None when logging is off."""
        from components.inference.prediction_log import PredictionLogWriter
        from components.settings import get_settings

        if not self.log_predictions:
            return None
        return PredictionLogWriter(
            get_settings().home / "predictions",
            flush_seconds=self.log_flush_seconds,
            max_queue_rows=self.log_queue_rows,
            on_dropped=on_dropped,
            on_written=on_written,
        )
