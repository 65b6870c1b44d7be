"""Flow `pipeline`: ingest -> fit and/or train (configs) -> evaluate -> register with the promotion rule."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from components.registry import Registry
from components.tuning import load_search
from flows.common import artifact_key
from flows.fit import fit_flow
from flows.ingest import ingest_flow
from flows.package import package_flow
from flows.register import register_flow
from flows.train import train_flow
from flows.tune import tune_flow


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    spec: str,
    configs: list[str],
    model_name: str | None = None,
    source: str | None = None,
    epochs: int | None = None,
    primary_metric: str = "r_at_p95_mean",
    search: str | None = None,
    package: bool = True,
    fit_budget: str | None = None,
    filter_label_noise: bool = False,
) -> dict:
    """The whole loop for one catalog. Each config trains a candidate; every candidate goes
    through the promotion rule, so the best of them (and of the old production) wins.
    With `search` (a search-space file) a hyperparameter search adds its best model as one
    more candidate (`configs` may then be empty). With `fit_budget` (e.g. "20m") the automatic
    model (`attrflow fit`: a portfolio, the best member or ensemble) is one more candidate, the
    first. When a candidate was promoted, the new
    production version is packaged as a Bento (`package=False` skips it)."""
    if search:
        load_search(search)  # a bad search file fails now, not after the training runs
    dataset = ingest_flow(spec, source)
    name = model_name or dataset["name"]
    candidates = []
    if fit_budget:
        fitted = fit_flow(dataset["dataset_dir"], fit_budget, filter_label_noise=filter_label_noise)
        registered = register_flow(fitted["model_dir"], fitted["run_id"], name, dataset["dataset_dir"], primary_metric)
        candidates.append({**registered, "fusion": fitted["fusion"], "run_id": fitted["run_id"]})
    for config in configs:
        trained = train_flow(config, dataset["dataset_dir"], epochs)
        registered = register_flow(
            trained["model_dir"], trained["run_id"], name, dataset["dataset_dir"], primary_metric
        )
        candidates.append({**registered, "fusion": trained["fusion"], "run_id": trained["run_id"]})
    if search:
        tuned = tune_flow(dataset["dataset_dir"], search, model_name=name, primary_metric=primary_metric)
        candidates.append(
            {k: tuned[k] for k in ("name", "version", "promoted", "reason", "metrics", "fusion", "run_id")}
        )
    with Registry() as registry:
        production = registry.get_production(name)
    bento = package_flow(name)["bento"] if package and any(c["promoted"] for c in candidates) else None
    rows = "\n".join(
        f"| v{c['version']} | {c['fusion']} | {c['metrics']['f1_macro_mean']:.3f} | {c['metrics']['r_at_p95_mean']:.3f} | "
        f"{'promoted' if c['promoted'] else 'candidate'} |"
        for c in candidates
    )
    create_markdown_artifact(
        f"# Pipeline for `{name}`\n\nDataset {dataset['name']} {dataset['version']} "
        f"({dataset['accepted']} products, {dataset['quarantined']} quarantined).\n\n"
        f"| version | fusion | F1 macro (mean) | R@P95 (mean) | decision |\n|---|---|---|---|---|\n{rows}\n\n"
        f"Production now: **v{production.version if production else '-'}**"
        + (f" (Bento `{bento}`)" if bento else "")
        + "\n",
        key=artifact_key("pipeline", name),
        description="Candidates trained in this run and the production model",
    )
    return {
        "dataset": dataset,
        "candidates": candidates,
        "production_version": production.version if production else None,
        "bento": bento,
    }
