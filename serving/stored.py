"""A model from BentoML's model store instead of the registry: the one a Bento carries (the
`package` flow's), or ATTRFLOW_BENTO_MODEL. Both endpoints (serving/service.py,
serving/extraction.py) pin their `ModelHolder` to it."""

from __future__ import annotations

from pathlib import Path

import bentoml

from serving.holder import Target
from serving.settings import ServingSettings


def pinned_model(settings: ServingSettings, service: object) -> Target | None:
    """The model to serve instead of following the registry: ATTRFLOW_BENTO_MODEL (a tag in
    BentoML's model store), else ATTRFLOW_MODEL_DIR (a folder, see ModelHolder), else, when
    `service` (the `bentoml.service` object, not the class it wraps: BentoML marks the former)
    runs from a Bento with one attrflow model in it (the `package` flow's), that model.
    A Bento's build-time envs reach containers only, not `bentoml serve <bento>`, hence the last one."""
    if settings.bento_model:
        return stored_model(settings.bento_model)
    if settings.model_dir is not None:
        return None
    bento = getattr(service, "bento", None)  # set by BentoML when the service is loaded from a Bento
    tags = [bentoml.Tag.from_taglike(m.tag) for m in bento.info.all_models] if bento else []
    packed = [str(tag) for tag in tags if tag.name.startswith("attrflow-")]
    return stored_model(packed[0]) if len(packed) == 1 else None


def stored_model(tag: str) -> Target:
    stored = bentoml.models.get(tag)
    version = stored.info.metadata.get("version")
    return Target(
        "bento",
        Path(stored.path),
        int(version) if version is not None else None,
        name=stored.info.labels.get("attrflow_model"),  # the registry name, as the package flow labels it
    )
