"""The `product` entity and its feature views.

Each view reads Parquet written at ingest (components/features/tables.py: a file with every dataset
version's rows, or a folder of one file per version for the embeddings); `event_timestamp` is the
version's ingest time. The embedding
views are made per encoder pair (`embedding_view`) when a model's embeddings are first written;
the module-level objects below are what `feast apply` sees (folders from ATTRFLOW_FEAST_DIR).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Bool, Float32, Int64, String

from components.features.tables import (
    ENTITY,
    IMAGE,
    KEY,
    LABELS,
    TEXT,
    TIMESTAMP,
    embedding_view_name,
    feast_dir,
    table_path,
)

TTL = timedelta(days=365)  # a product not seen in a year's ingests has no features any more

product = Entity(name=ENTITY, join_keys=[KEY], value_type=ValueType.STRING, description="A catalog product (its id)")


def _source(view: str, root: Path) -> FileSource:
    """The view's Parquet (a file, or a folder for an embedding view: components/features/tables.py)."""
    return FileSource(name=f"{view}_source", path=str(table_path(view, root)), timestamp_field=TIMESTAMP)


def product_views(root: Path | None = None) -> list[FeatureView]:
    """The text, image and label views, reading their files under `root` (the feast folder)."""
    root = root or feast_dir()

    def view(name: str, schema: list[Field], description: str) -> FeatureView:
        return FeatureView(
            name=name,
            entities=[product],
            ttl=TTL,
            schema=schema,
            source=_source(name, root),
            online=True,
            description=description,
        )

    return [
        view(
            TEXT,
            [
                Field(name="title", dtype=String),
                Field(name="description", dtype=String),
                Field(name="dataset_version", dtype=String),
            ],
            "The product's title and description",
        ),
        view(
            IMAGE,
            [
                Field(name="image_path", dtype=String),
                Field(name="image_sha256", dtype=String),
                Field(name="image_width", dtype=Int64),
                Field(name="image_height", dtype=Int64),
                Field(name="image_brightness", dtype=Float32),
                Field(name="image_colourfulness", dtype=Float32),
            ],
            "The product's image: where it is, its SHA-256, size, brightness and colourfulness ('' / 0: no image)",
        ),
        view(
            LABELS,
            [Field(name="labels", dtype=String), Field(name="dataset_version", dtype=String)],
            "The attribute values the seller gave, a JSON object {attribute: value | [values] | null}",
        ),
    ]


def embedding_view(
    text_identity: str, image_identity: str, text_dim: int, image_dim: int, root: Path | None = None
) -> FeatureView:
    """The pooled embeddings of one encoder pair; its tags say which pair and which sizes."""
    name = embedding_view_name(text_identity, image_identity)
    return FeatureView(
        name=name,
        entities=[product],
        ttl=TTL,
        schema=[
            Field(name="text_embedding", dtype=Array(Float32)),
            Field(name="image_embedding", dtype=Array(Float32)),
            Field(name="has_image", dtype=Bool),
            Field(name="dataset_version", dtype=String),
        ],
        source=_source(name, root or feast_dir()),
        online=True,
        description="Pooled text and image embeddings of one encoder pair (the frozen-training cache)",
        tags={
            "text_encoder": text_identity,
            "image_encoder": image_identity,
            "text_dim": str(text_dim),
            "image_dim": str(image_dim),
        },
    )


product_text, product_image, product_labels = product_views()
