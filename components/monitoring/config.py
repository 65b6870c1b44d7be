"""What a drift report compares and how it decides: every statistical test pinned per column type.

Evidently picks a test by sample size when it is not told (K-S / chi-square / Z below 1,000
reference rows, Wasserstein / Jensen-Shannon above), so the same window could be judged by two
different rules on two days. Here every column type has one test and one threshold, fixed in the
config and written into every check's result.

The defaults are p-value tests at 0.001 on windows sampled down to `max_rows` (1,000) rows:

- numerical (title length, image brightness, ...): `ks`, two-sample Kolmogorov-Smirnov;
- binary (has_image, published, one multilabel value, ...): `z`, two-proportion Z-test;
- categorical (the predicted value, the label): `chi2_contingency`, a chi-square test of the
  2 x k table of reference and current counts. Evidently's own `chisquare` tests the current
  counts against the reference ones taken as exact (a goodness-of-fit test), which ignores the
  reference's sampling noise and flags drift far more often than its threshold says;
  `chi2_contingency` is registered with Evidently by this package (see `_evidently.py`).
- embeddings: Evidently's `model` method (a classifier told to separate reference from current
  rows; the score is its ROC AUC on held-out rows), drift above 0.55, raised for small windows.

Why p-values rather than distances: Evidently's distance defaults (Wasserstein 0.1, Jensen-Shannon
0.1) are meant for more than 1,000 rows; on a few hundred rows two samples of one distribution
often exceed them (normed Wasserstein ~0.13 on average at 200 rows; Jensen-Shannon ~0.16 for 20
categories at 200 rows). A p-value test holds its false-alarm rate at any window size, and
sampling to `max_rows` bounds how small a shift it can flag (at 1,000 rows per side: a mean shift
of about 0.2 standard deviations, or a proportion moving by 6-7 points). Raise `max_rows` for a
more sensitive report, lower the thresholds for a quieter one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.yaml_files import describe_errors, read_yaml_mapping

CheckKind = Literal["input", "embedding", "prediction", "label"]
ColumnType = Literal["numerical", "categorical", "binary"]
EmbeddingMethod = Literal["model", "distance", "ratio", "mmd"]

# Evidently's tests whose score is a p-value (drift when score < threshold); the others are
# distances (drift when score >= threshold). Verdicts come from Evidently either way.
P_VALUE_METHODS = frozenset(
    {
        "anderson",
        "chisquare",
        "chi2_contingency",
        "cramer_von_mises",
        "empirical_mmd",
        "es",
        "fisher_exact",
        "g_test",
        "ks",
        "mannw",
        "t_test",
        "TVD",
        "z",
    }
)

# Evidently's own defaults for its embedding drift methods (bootstrap off), pinned here.
EMBEDDING_THRESHOLDS: dict[str, float] = {"model": 0.55, "distance": 0.2, "ratio": 0.2, "mmd": 0.015}


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftTest(_Config):
    """One statistical test: an Evidently stattest name (`ks`, `z`, `chisquare`, `wasserstein`,
    `jensenshannon`, `psi`, ... or `chi2_contingency`) and the threshold it decides with."""

    method: str
    threshold: float = Field(gt=0)


class EmbeddingDriftTest(_Config):
    """Evidently's embeddings drift (`EmbeddingsDrift`) with one of its methods, without bootstrap.

    `model` (the default): ROC AUC of a classifier separating reference from current rows, drift
    when above the threshold. On a small window a chance AUC varies by sd = sqrt((n1 + n2 + 1) /
    (12 n1 n2)) over the n1, n2 held-out rows (half of each side), so the threshold used is
    max(threshold, 0.5 + noise_margin * sd): 0.555 at 1,000 + 1,000 rows, 0.60 at 300 + 300.
    The check reports the threshold it used.
    """

    method: EmbeddingMethod = "model"
    threshold: float | None = None  # None: EMBEDDING_THRESHOLDS[method]
    noise_margin: float = Field(3.0, ge=0)  # `model` only
    pca_components: int | None = Field(None, gt=0)  # reduce the vectors first (Evidently's option)

    @property
    def base_threshold(self) -> float:
        return self.threshold if self.threshold is not None else EMBEDDING_THRESHOLDS[self.method]


class DecisionRule(_Config):
    """When a report says `drift_detected`.

    Drift when a check of a `decisive_kinds` kind drifted, or when the share of drifted checks
    reaches `drift_share`; `drift_share` None (the default) means any drifted check at all.

    The default is therefore "any check": with p-value tests at 0.001 a report of 50 checks on
    two samples of one distribution raises a false alarm about 5% of the time (less, since the
    checks are correlated). Set `drift_share` (e.g. 0.3) to let the input statistics count only
    together, while a drifted embedding, predicted-value distribution or label still decides alone.
    """

    drift_share: float | None = Field(None, gt=0, le=1)
    decisive_kinds: frozenset[CheckKind] = frozenset({"embedding", "prediction", "label"})


class MonitoringConfig(_Config):
    """Everything a drift report is decided by; stored with each report (`DriftReport.config`)."""

    numerical: DriftTest = DriftTest(method="ks", threshold=0.001)
    binary: DriftTest = DriftTest(method="z", threshold=0.001)
    categorical: DriftTest = DriftTest(method="chi2_contingency", threshold=0.001)
    embedding: EmbeddingDriftTest = EmbeddingDriftTest()
    per_column: dict[str, DriftTest] = {}  # a column's own test, by column name (e.g. "pred:baseColour")
    decision: DecisionRule = DecisionRule()
    # Each side is sampled (seeded) down to max_rows rows before anything is computed: it bounds the
    # time (Evidently draws a t-SNE of each embedding's rows) and the sensitivity of the p-value tests.
    max_rows: int = Field(1000, ge=10)
    seed: int = 0
    # A check needs at least min_rows non-missing values on each side; fewer and it is skipped.
    min_rows: int = Field(30, ge=2)
    # Categorical values rarer than this in the reference are pooled as "(other)" on both sides, so
    # the chi-square table has no near-empty cells (a new value shows as "(other)" growing).
    min_category_share: float = Field(0.01, ge=0, lt=1)
    embeddings: bool = True  # False: no embedding checks (they are the slow part)
    check_scores: bool = False  # also test each attribute's top score (`score:<attr>`, numerical)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MonitoringConfig:
        """A monitoring config file (configs/monitoring/default.yaml); errors name the file and field."""
        path = Path(path)
        raw = read_yaml_mapping(path, "monitoring config", empty_ok=True)
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"{path}: invalid monitoring config: {describe_errors(e)}") from None

    def test_for(self, column: str, column_type: ColumnType) -> DriftTest:
        if column in self.per_column:
            return self.per_column[column]
        return {"numerical": self.numerical, "binary": self.binary, "categorical": self.categorical}[column_type]
