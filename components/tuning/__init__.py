"""Hyperparameter search (Ray Tune + Optuna + ASHA) over fusion type, lambda, learning rates, ...

Plain library code, no orchestration: `flows/tune.py` wraps it in a Prefect flow.

    from components.tuning import load_search, run_search
    spec = load_search("configs/search/default.yaml")
    result = run_search(spec, dataset, "out/search")
"""

from components.tuning.search import (
    SearchResult,
    TrialRecord,
    prepare_embeddings,
    ray_session,
    retrain_on_train_validation,
    run_search,
)
from components.tuning.space import SearchSpec, build_train_config, load_search

__all__ = [
    "SearchResult",
    "SearchSpec",
    "TrialRecord",
    "build_train_config",
    "load_search",
    "prepare_embeddings",
    "ray_session",
    "retrain_on_train_validation",
    "run_search",
]
