"""The model registry: datasets, training runs, model versions and drift reports in a database (SQLite
or PostgreSQL), with candidate -> production promotion and rollback. Start at repository.py."""

from components.registry.records import (
    DatasetRecord,
    DriftReportRecord,
    ModelVersionRecord,
    PromotionDecision,
    RunRecord,
)
from components.registry.repository import PRIMARY_METRIC, Registry, RegistryError

__all__ = [
    "PRIMARY_METRIC",
    "DatasetRecord",
    "DriftReportRecord",
    "ModelVersionRecord",
    "PromotionDecision",
    "Registry",
    "RegistryError",
    "RunRecord",
]
