"""What a search leaves for people: a markdown leaderboard and metric-vs-lambda plot."""

from __future__ import annotations

from pathlib import Path

from components.tuning.records import SearchResult, TrialRecord
from components.tuning.space import Parameters

# Columns in the order the search file declares its parameters (one list: a new parameter shows up).
_PARAM_ORDER = tuple(Parameters.model_fields)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _status(t: TrialRecord) -> str:
    return "stopped early (ASHA)" if t.stopped_early else "interrupted" if t.interrupted else t.status


def leaderboard_markdown(result: SearchResult, top: int = 10, plot: Path | None = None) -> str:
    metric = result.metric
    ranked = result.ranked()[:top]
    params = [p for p in _PARAM_ORDER if any(p in t.params for t in ranked)]
    counts = result.counts()
    lines = [
        f"# Hyperparameter search: best {metric} (validation, mean over attributes)\n",
        f"{len(result.trials)} trials in {result.seconds:.0f}s: {counts['completed']} completed, "
        f"{counts['stopped_early']} stopped early by ASHA, {counts['interrupted']} interrupted (time budget), "
        f"{counts['failed']} failed. "
        f"Mode: {result.spec.mode}. Search space: `{result.spec.source}`.\n",
        "| rank | trial | run | " + " | ".join(params) + f" | best {metric} | epoch | epochs run | status |",
        "|" + "---|" * (len(params) + 7),
    ]
    for i, t in enumerate(ranked, 1):
        cells = [_fmt(t.params.get(p, "-")) for p in params]
        best = t.best(metric)
        lines.append(
            f"| {i} | {t.trial_id} | {t.run_id if t.run_id is not None else '-'} | "
            + " | ".join(cells)
            + f" | {best:.4f} | {t.summary(metric)['best_epoch'] or '-'} | {len(t.history)} | {_status(t)} |"
        )
    failed = [t for t in result.trials if t.status == "failed"]
    if failed:
        lines.append("\nFailed trials:\n")
        lines += [f"- {t.trial_id} (run {t.run_id}): {(t.error or '').splitlines()[0][:200]}" for t in failed]
    if result.best is not None:
        lines.append(
            f"\nBest trial: **{result.best.trial_id}** "
            f"({', '.join(f'{k}={_fmt(v)}' for k, v in result.best.params.items())})."
        )
    if plot is not None:
        lines.append(f"\nMetric vs lambda per fusion: `{plot}`")
    return "\n".join(lines) + "\n"


def plot_metric_vs_lambda(result: SearchResult, path: str | Path) -> Path:
    """Best validation metric of each trial against lambda_kl (log scale): modality_attention
    trials as points (lambda is theirs), every other fusion as a band from its worst to its
    best trial with a line at its best (lambda does not apply to them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    metric = result.metric
    scored = [t for t in result.trials if t.best(metric) is not None]
    by_fusion: dict[str, list[TrialRecord]] = {}
    for t in scored:
        by_fusion.setdefault(str(t.params.get("fusion", "?")), []).append(t)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lambdas = [t.params["lambda_kl"] for t in by_fusion.get("modality_attention", []) if "lambda_kl" in t.params]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (fusion, ts) in enumerate(sorted(by_fusion.items())):
        colour = colours[i % len(colours)]
        with_lambda = [t for t in ts if "lambda_kl" in t.params]
        if fusion == "modality_attention" and with_lambda:
            done = [t for t in with_lambda if not t.stopped_early]
            stopped = [t for t in with_lambda if t.stopped_early]
            ax.scatter(
                [t.params["lambda_kl"] for t in done],
                [t.best(metric) for t in done],
                color=colour,
                label=f"{fusion} ({len(with_lambda)})",
                zorder=3,
            )
            ax.scatter(
                [t.params["lambda_kl"] for t in stopped],
                [t.best(metric) for t in stopped],
                color=colour,
                marker="x",
                zorder=3,
                label=f"{fusion}, stopped early" if stopped else None,
            )
        else:
            values = [t.best(metric) for t in ts]
            ax.axhspan(min(values), max(values), color=colour, alpha=0.12)
            ax.axhline(max(values), color=colour, linestyle="--", label=f"{fusion} ({len(ts)}; best, range)")
    if lambdas:
        ax.set_xscale("log")
        ax.set_xlim(min(lambdas) / 2, max(lambdas) * 2)
    ax.set_xlabel("lambda_kl (modality_attention's KL weight)")
    ax.set_ylabel(f"best validation {metric}")
    ax.set_title("Search: metric vs lambda per fusion")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
