"""The model registry: datasets, training runs and model versions in a database (SQLite or
PostgreSQL), with candidate -> production promotion and rollback. Start at repository.py."""

from components.registry.records import DatasetRecord, ModelVersionRecord, PromotionDecision, RunRecord
from components.registry.repository import PRIMARY_METRIC, Registry, RegistryError

__all__ = [
    "PRIMARY_METRIC",
    "DatasetRecord",
    "ModelVersionRecord",
    "PromotionDecision",
    "Registry",
    "RegistryError",
    "RunRecord",
]
