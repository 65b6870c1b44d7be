"""Catalog specs, ingestion with quarantine, versioned datasets, splits and the demo catalog."""

from components.catalog.dataset import Dataset, load_dataset
from components.catalog.ingest import IngestRejected, IngestResult, ingest
from components.catalog.spec import AttributeSpec, CatalogSpec, SpecError, load_spec

__all__ = [
    "AttributeSpec",
    "CatalogSpec",
    "Dataset",
    "IngestRejected",
    "IngestResult",
    "SpecError",
    "ingest",
    "load_dataset",
    "load_spec",
]
