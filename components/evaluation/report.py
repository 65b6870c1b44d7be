"""Evaluation report: pydantic model, markdown table, JSON and plots on disk."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend, no display needed
from pydantic import BaseModel, ConfigDict

from components.evaluation.metrics import precision_recall_points

# (scores, correct, n_positive); the (scores, correct, unused, n_positive) form is accepted too.
Curve = tuple[np.ndarray, np.ndarray, int] | tuple[np.ndarray, np.ndarray, object, int]


class AttributeReport(BaseModel):
    # NaN (e.g. weight stats with n = 0) is written as "NaN" so the JSON stays valid and reloads.
    model_config = ConfigDict(ser_json_inf_nan="strings")

    kind: str
    accuracy: float | None
    f1_micro: float
    f1_macro: float
    f1_weighted: float
    r_at_p95: float
    n: int
    image_weight: dict[str, float] | None = None


class EvaluationReport(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")

    model: str
    dataset: str
    split: str
    attributes: dict[str, AttributeReport]

    def mean(self, metric: str) -> float:
        """Mean over attributes, skipping None (e.g. multilabel accuracy); NaN when nothing to average."""
        values = [getattr(a, metric) for a in self.attributes.values()]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else math.nan

    def to_markdown(self) -> str:
        with_weights = any(a.image_weight for a in self.attributes.values())
        head = ["attribute", "kind", "n", "accuracy", "F1 micro", "F1 macro", "F1 weighted", "R@P95"]
        if with_weights:
            head.append("image weight")
        metrics = ["accuracy", "f1_micro", "f1_macro", "f1_weighted", "r_at_p95"]
        lines = [
            f"# Evaluation: {self.model} on {self.dataset} ({self.split})",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for name, a in self.attributes.items():
            row = [name, a.kind, str(a.n)] + [_fmt(getattr(a, m)) for m in metrics]
            if with_weights:
                w = a.image_weight
                row.append(f"{_fmt(w['mean'])} ± {_fmt(w['std'])}" if w else "-")
            lines.append("| " + " | ".join(row) + " |")
        mean_row = ["mean", "", ""] + [_fmt(self.mean(m)) for m in metrics] + (["-"] if with_weights else [])
        lines.append("| " + " | ".join(mean_row) + " |")
        return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.3f}"


def write_report(
    report: EvaluationReport,
    out_dir: Path,
    curves: dict[str, Curve] | None = None,
    image_weights: dict[str, np.ndarray] | None = None,
    target: float = 0.95,
) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "metrics.json", "markdown": out_dir / "metrics.md"}
    paths["json"].write_text(report.model_dump_json(indent=2))
    paths["markdown"].write_text(report.to_markdown())
    if curves:
        paths["pr_plot"] = _pr_plot(curves, out_dir / "pr_curves.png", target)
    if image_weights:
        paths["weights_plot"] = _weights_plot(image_weights, out_dir / "modality_weights.png")
    return paths


def _pr_plot(curves: dict[str, Curve], path: Path, target: float) -> Path:
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        scores, correct, *_, n_positive = curve
        precision, recall = precision_recall_points(scores, correct, int(n_positive))
        ax.plot(recall, precision, label=name)
    ax.axhline(target, linestyle="--", color="grey", label=f"precision {target:.2f}")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall per attribute")
    ax.legend(loc="lower left", fontsize="small")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _weights_plot(image_weights: dict[str, np.ndarray], path: Path) -> Path:
    names = list(image_weights)
    # matplotlib cannot draw an empty box; an empty attribute keeps its slot on the axis.
    data = [np.asarray(image_weights[n], dtype=float).ravel() for n in names]
    data = [d if d.size else np.array([np.nan]) for d in data]
    fig = Figure(figsize=(max(4, 1.2 * len(names)), 4))
    ax = fig.add_subplot()
    ax.boxplot(data)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    ax.set(ylabel="image weight", ylim=(0, 1), title="Image-modality weight per attribute")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path
