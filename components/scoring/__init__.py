"""Batch scoring: every product of a dataset through a saved model, to Parquet, in this process or
on Ray (a local instance on this machine's cores, or a cluster).

    from components.scoring import ScoreConfig, score_dataset
    result = score_dataset(model_dir, load_dataset(path), "predictions.parquet")              # local Ray
    result = score_dataset(model_dir, ds, "p.parquet", address="ray://head:10001")           # a cluster
    result = score_dataset(model_dir, ds, "p.parquet", ScoreConfig(), in_process=True)       # no Ray
"""

from components.scoring.batch import ScoreConfig, ScoreResult, score_dataset

__all__ = ["ScoreConfig", "ScoreResult", "score_dataset"]
