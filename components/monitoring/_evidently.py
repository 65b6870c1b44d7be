"""The one module of `components` that imports Evidently (import-linter allows this edge only).

Only the report API is used here: `Report`, `Dataset`, `DataDefinition`, the drift preset and
metrics, the snapshot. Evidently's UI, workspace and cloud SDK (`evidently.ui`, `evidently.sdk`)
belong outside `components` (tests/test_monitoring.py checks that no module here imports them).

Two additions to Evidently, both done once on import:

- pandas 3: Evidently 0.7.23 (the last 0.7) imports `pandas.core.dtypes.common.infer_dtype_from_object`,
  which pandas 3 removed, at import time, for one legacy test class (`TestColumnsType`) that this
  package never runs. Where pandas lacks it, a stand-in that raises is put there so the import
  succeeds; with pandas 2 nothing is changed.
- `chi2_contingency`: a two-sample chi-square test of the 2 x k table of counts, registered as an
  Evidently stattest for categorical columns (see config.py for why Evidently's `chisquare` is not used).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pandas.core.dtypes.common as _pandas_common
from scipy.stats import chi2_contingency

if not hasattr(_pandas_common, "infer_dtype_from_object"):  # pandas >= 3

    def _infer_dtype_from_object(dtype: Any) -> Any:
        raise NotImplementedError("pandas 3 has no infer_dtype_from_object (stand-in for Evidently's import)")

    _pandas_common.infer_dtype_from_object = _infer_dtype_from_object  # type: ignore[attr-defined]

from evidently import DataDefinition, Dataset, Report  # noqa: E402
from evidently.core.report import Snapshot  # noqa: E402
from evidently.legacy.calculations.stattests import StatTest, register_stattest  # noqa: E402
from evidently.legacy.core import ColumnType  # noqa: E402
from evidently.metrics import EmbeddingsDrift  # noqa: E402
from evidently.metrics.embeddings import (  # noqa: E402
    DistanceDriftMethod,
    DriftMethod,
    MMDDriftMethod,
    ModelDriftMethod,
    RatioDriftMethod,
)
from evidently.presets import DataDriftPreset  # noqa: E402

__all__ = [
    "DataDefinition",
    "DataDriftPreset",
    "Dataset",
    "DriftMethod",
    "EmbeddingsDrift",
    "Report",
    "Snapshot",
    "embedding_drift_method",
]


def _chi2_contingency(
    reference: pd.Series, current: pd.Series, feature_type: ColumnType, threshold: float
) -> tuple[float, bool]:
    """p-value of the chi-square test of independence between side and value (no continuity correction)."""
    ref_counts = reference.value_counts()
    cur_counts = current.value_counts()
    values = ref_counts.index.union(cur_counts.index)
    table = np.vstack(
        [ref_counts.reindex(values, fill_value=0).to_numpy(), cur_counts.reindex(values, fill_value=0).to_numpy()]
    )
    if table.shape[1] < 2:  # one value on both sides: nothing moved
        return 1.0, False
    p_value = float(chi2_contingency(table, correction=False).pvalue)
    return p_value, p_value < threshold


register_stattest(
    StatTest(
        name="chi2_contingency",
        display_name="chi-square contingency p_value",
        allowed_feature_types=[ColumnType.Categorical],
        default_threshold=0.001,
    ),
    _chi2_contingency,
)


def embedding_drift_method(method: str, threshold: float, pca_components: int | None) -> DriftMethod:
    """Evidently's drift method object, bootstrap off (so the threshold is the one given)."""
    if method == "model":
        return ModelDriftMethod(threshold=threshold, bootstrap=False, pca_components=pca_components)
    if method == "distance":
        return DistanceDriftMethod(threshold=threshold, bootstrap=False, pca_components=pca_components)
    if method == "mmd":
        return MMDDriftMethod(threshold=threshold, bootstrap=False, pca_components=pca_components)
    if method == "ratio":
        return RatioDriftMethod(threshold=threshold, pca_components=pca_components)
    raise ValueError(f"unknown embedding drift method {method!r}")
