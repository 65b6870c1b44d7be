"""The `attrflow` command: typed subcommands over `components` (and, later, `flows`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from attrflow.registry_cli import models_app, runs_app
from components.catalog import SpecError, ingest, load_spec
from components.catalog.demo import write_demo_catalog
from components.catalog.readers import SourceError
from components.settings import get_settings

# The shipped YAML configs live in the checkout's configs/ (the README's commands name them).
CHECKOUT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _configs_dir(given: Path | None) -> Path:
    """--configs, else ./configs, else the checkout's; a clear error when none has the model configs."""
    for folder in (given,) if given else (Path("configs"), CHECKOUT_CONFIGS):
        if (folder / "models").is_dir():
            return folder
    _fail(
        f"no model configs found in {given or 'configs/ (here or beside the attrflow package)'}: "
        "`attrflow demo` uses the configs/ folder of an attrflow checkout; run it from the checkout "
        "or pass --configs PATH/TO/attrflow/configs"
    )
    raise AssertionError  # _fail exits


app = typer.Typer(no_args_is_help=True, add_completion=False, help="Multimodal product attribute extraction.")
app.add_typer(models_app, name="models")
app.add_typer(runs_app, name="runs")


@app.callback()
def _quiet() -> None:
    # transformers 5 draws a "Loading weights" bar on every model load; noise on a CLI.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


@app.command("demo-catalog")
def demo_catalog(
    out: Annotated[Path, typer.Option(help="Folder to write catalog.csv, images/ and catalog.yaml into.")],
    n: Annotated[int, typer.Option(help="Number of products.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same catalog.")] = 0,
    defects: Annotated[bool, typer.Option(help="Append one broken row per quarantine reason.")] = True,
) -> None:
    """Write the built-in demo catalog (rendered products, titles, descriptions, a spec)."""
    spec_path = write_demo_catalog(out, n=n, seed=seed, defects=defects)
    typer.echo(f"wrote {n} products to {out} (spec: {spec_path})")


@app.command("ingest")
def ingest_cmd(
    spec: Annotated[Path, typer.Argument(help="Catalog spec (YAML).")],
    source: Annotated[Path | None, typer.Option(help="Catalog file to read instead of the spec's source.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
) -> None:
    """Validate a catalog, quarantine bad rows, write a versioned dataset."""
    try:
        result = ingest(load_spec(spec), source=source)
    except (SpecError, SourceError, ValueError) as e:
        _fail(str(e))
    typer.echo(
        f"{result.name} {result.version}: {result.rows} rows, {result.accepted} accepted, "
        f"{result.quarantined} quarantined in {result.seconds:.1f}s"
        + (" (already ingested, reused)" if result.reused else "")
    )
    for reason, count in result.reasons.items():
        typer.echo(f"  quarantined {count:>6}  {reason}")
    typer.echo(f"  splits: {result.splits}")
    typer.echo(f"  dataset: {result.dataset_dir}")
    if as_json:
        typer.echo(result.model_dump_json())


@app.command("train")
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Training config (YAML), e.g. configs/models/concat.yaml.")],
    dataset: Annotated[Path, typer.Option(help="Dataset folder written by `attrflow ingest`.")],
    out: Annotated[
        Path | None, typer.Option(help="Model folder (default ATTRFLOW_HOME/models/<dataset>/<config>).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = False,
    epochs: Annotated[int | None, typer.Option(help="Override training.epochs.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
) -> None:
    """Train a model; saves the best epoch with its per-value publishing thresholds. A config with
    `model: {task: extraction}` trains a value-extraction tagger (values located in the titles)."""
    from components.catalog import load_dataset
    from components.training.trainer import load_train_config, train

    if _is_extraction_config(config):
        _train_extraction(config, dataset, out, as_json)
        return
    try:
        cfg = load_train_config(config, **({"training": {"epochs": epochs}} if epochs else {}))
        ds = load_dataset(dataset)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    out = out or get_settings().home / "models" / ds.name / config.stem
    result = train(cfg, ds, out, resume=resume)
    typer.echo(
        f"model: {result.model_dir} (best epoch {result.best_epoch} of {result.epochs_run}, "
        f"{result.items_per_second:.0f} items/s)"
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "model_dir": str(result.model_dir),
                    "best_epoch": result.best_epoch,
                    "validation": result.validation,
                    "items_per_second": result.items_per_second,
                }
            )
        )


def _is_extraction_config(path: Path) -> bool:
    from components.training.extraction import is_extraction_config

    try:
        return is_extraction_config(path)
    except ValueError as e:
        _fail(str(e))


def _train_extraction(config: Path, dataset: Path, out: Path | None, as_json: bool) -> None:
    from components.catalog import load_dataset
    from components.training.extraction import load_extraction_config, train_extraction

    try:
        cfg, ds = load_extraction_config(config), load_dataset(dataset)
        out = out or get_settings().home / "models" / ds.name / config.stem
        result = train_extraction(cfg, ds, out, log=typer.echo)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    m = result.validation["micro"]
    typer.echo(f"model: {result.model_dir} (validation value F1 {m['f1']:.3f}, {result.seconds:.0f} s)")
    typer.echo("publishing thresholds: " + ", ".join(f"{a} {t}" for a, t in result.thresholds.items()))
    if as_json:
        typer.echo(json.dumps({"model_dir": str(result.model_dir), "validation": result.validation}))


def _is_extraction_model(model_dir: Path) -> bool:
    from components.models.io import model_task

    try:
        return model_task(model_dir) == "extraction"
    except FileNotFoundError:
        return False


@app.command("evaluate")
def evaluate_cmd(
    model_dir: Annotated[Path, typer.Argument(help="A model folder written by `attrflow train`.")],
    dataset: Annotated[Path, typer.Option(help="Dataset folder.")],
    split: Annotated[str, typer.Option(help="test, validation, train or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Report folder (default MODEL_DIR/eval-<split>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the metrics.")] = False,
) -> None:
    """Per-attribute accuracy, F1 (micro/macro/weighted) and R@P95, with a report and plots. For an
    extraction model: value precision/recall/F1 by the benchmarks' counting rule, span F1, R@P95."""
    from components.catalog import load_dataset
    from components.evaluation.evaluate import evaluate

    if _is_extraction_model(model_dir):
        from components.evaluation.extraction import evaluate_extraction

        try:
            report = evaluate_extraction(model_dir, load_dataset(dataset), split)
        except (ValueError, FileNotFoundError) as e:
            _fail(str(e))
        m = report["micro"]
        typer.echo(
            f"values ({split}): P {m['precision']:.3f} R {m['recall']:.3f} F1 {m['f1']:.3f} "
            f"(NN {m['NN']} NV {m['NV']} VN {m['VN']} VC {m['VC']} VW {m['VW']}), span F1 {report['span_f1']:.3f}, "
            f"R@P95 {report['value_r_at_p95']:.3f}"
        )
        for a, v in report["per_attribute"].items():
            typer.echo(f"{a:>14}: F1 {v['f1']:.3f} (n {v['n']})")
        if as_json:
            typer.echo(json.dumps(report))
        return
    try:
        report, paths = evaluate(model_dir, load_dataset(dataset), split, out)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(report.to_markdown())
    typer.echo("report: " + ", ".join(str(p) for p in paths.values()))
    if as_json:
        typer.echo(report.model_dump_json(include={"attributes"}))


@app.command("predict")
def predict_cmd(
    model_dir: Annotated[
        Path | None,
        typer.Argument(
            help="A model folder written by `attrflow train` (with --id: default --model's production version)."
        ),
    ] = None,
    title: Annotated[str, typer.Option(help="Product title.")] = "",
    description: Annotated[str, typer.Option(help="Product description.")] = "",
    image: Annotated[Path | None, typer.Option(help="Path to the product image.")] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="A catalog product id, its features read from the feature store (repeatable)."),
    ] = None,
    model: Annotated[str, typer.Option(help="With --id and no MODEL_DIR: the registry model to use.")] = "demo",
    top_k: Annotated[int, typer.Option(help="Values to show per attribute.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the prediction as JSON.")] = False,
) -> None:
    """Predict one product's attributes; `published` marks values above their saved threshold.
    With --id, products already in the catalog, as POST /predict_by_id does."""
    from components.inference.inputs import Product, decode_image
    from components.inference.predictor import Predictor

    if ids:
        _predict_ids(model_dir, model, ids, top_k, as_json)
        return
    if model_dir is None:
        _fail("give a MODEL_DIR (or --id with a registry model)")
    if _is_extraction_model(model_dir):
        _extract_one(model_dir, title, image, as_json)
        return
    try:
        product = Product(title=title, description=description)
        if image is not None:
            if not image.is_file():
                raise FileNotFoundError(f"image {image} does not exist")
            product.image = decode_image(image.read_bytes(), field=f"image {image}")
        result = Predictor(model_dir).predict([product], top_k=top_k).results[0]
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(result))
        return
    _print_attributes(result)


def _extract_one(model_dir: Path, title: str, image: Path | None, as_json: bool) -> None:
    """An extraction model's values for one title: offsets, score, published."""
    from components.inference.extraction import extract_values
    from components.inference.inputs import decode_image

    try:
        if not title.strip():
            raise ValueError("--title: an extraction model needs the product's title")
        picture = None
        if image is not None:
            if not image.is_file():
                raise FileNotFoundError(f"image {image} does not exist")
            picture = decode_image(image.read_bytes(), field=f"image {image}")
        values = extract_values(model_dir, [title], [picture])[0]
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps({"title": title, "values": values}))
        return
    for v in values:
        typer.echo(
            f"{v['attribute']:>14}: {v['value']!r} [{v['start']}:{v['end']}] {v['score']:.2f}{' *' if v['published'] else ''}"
        )
    typer.echo("(* = confident enough to publish)" if values else "no value found")


def _print_attributes(result: dict) -> None:
    for name, attr in result["attributes"].items():
        shown = ", ".join(f"{v['value']} {v['score']:.2f}{' *' if v['published'] else ''}" for v in attr["values"])
        weights = attr.get("modality_weights")
        extra = f"   [text {weights['text']:.2f} / image {weights['image']:.2f}]" if weights else ""
        typer.echo(f"{name:>14}: {shown}{extra}")
    typer.echo("(* = confident enough to publish)")


def _predict_ids(model_dir: Path | None, model: str, ids: list[str], top_k: int, as_json: bool) -> None:
    """Catalog products by id: features from the online store, scored as the endpoint scores them."""
    from components.inference.predictor import Predictor
    from serving.by_id import OnlineScorer
    from serving.schemas import ModelRef

    version = None
    if model_dir is None:
        from components.registry import Registry

        with Registry() as registry:
            production = registry.get_production(model)
        if production is None:
            _fail(f"model {model!r} has no production version (see `attrflow models list`); or give a MODEL_DIR")
        model_dir, version = production.artifact_dir, production.version
    try:
        results = OnlineScorer().score(Predictor(model_dir), ModelRef(name=model, version=version), ids, top_k)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in results]))
        return
    for r in results:
        if r.status != "ok":
            typer.echo(f"{r.id}: {r.status}" + (f" ({r.error})" if r.error else ""))
            continue
        typer.echo(f"{r.id} (from the stored {'embeddings' if r.features == 'embeddings' else 'text and image'}):")
        _print_attributes(r.model_dump(mode="json"))


features_app = typer.Typer(no_args_is_help=True, help="The feature store (Feast, feature_repo/): products by id.")
app.add_typer(features_app, name="features")


@features_app.command("materialize")
def features_materialize(
    model: Annotated[
        str | None,
        typer.Option(help="First write this registry model's production embeddings (its training dataset version)."),
    ] = None,
) -> None:
    """Bring the online store up to date with everything written since the last run."""
    from flows.features import materialize_flow

    result = materialize_flow(model)
    typer.echo(f"materialized {', '.join(result['views']) or 'no feature views'} up to {result['end']}")


@features_app.command("get")
def features_get(
    ids: Annotated[list[str], typer.Argument(help="Catalog product ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What the online store holds for products: text, image and labels (null: unknown id)."""
    from feature_repo.store import online_features

    rows = dict(zip(ids, online_features(ids), strict=True))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for product_id, row in rows.items():
        if row is None:
            typer.echo(f"{product_id}: not_found")
            continue
        typer.echo(f"{product_id} (dataset version {row['dataset_version']}): {row['title']!r}")
        typer.echo(f"  image: {row['image_path'] or '(none)'}  labels: {json.dumps(row['labels'])}")


@app.command("fit")
def fit_cmd(
    catalog: Annotated[Path, typer.Argument(help="A catalog spec (YAML, ingested first) or a dataset folder.")],
    time_budget: Annotated[str, typer.Option(help="Training budget, e.g. 20m, 90s, 1h.")] = "20m",
    model_name: Annotated[str | None, typer.Option(help="Registry model name (default: the dataset name).")] = None,
    filter_label_noise: Annotated[
        bool, typer.Option(help="Leave out train labels that confident learning flags (report beside the model).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
) -> None:
    """The automatic model: train a portfolio (TF-IDF + LR, text, concat, late, modality attention)
    within the budget, keep the best member or ensemble on validation, register it through the
    promotion rule."""
    from components.training.fit import parse_duration

    try:
        parse_duration(time_budget)
    except ValueError as e:
        _fail(f"--time-budget: {e}")
    if catalog.is_dir():
        from components.catalog import load_dataset
        from flows.fit import fit_flow
        from flows.register import register_flow

        try:
            name = model_name or load_dataset(catalog).name
        except (ValueError, FileNotFoundError) as e:
            _fail(str(e))
        from components.registry import Registry

        fitted = fit_flow(str(catalog), time_budget, filter_label_noise=filter_label_noise)
        registered = register_flow(fitted["model_dir"], fitted["run_id"], name, str(catalog))
        with Registry() as registry:
            production = registry.get_production(name)
        result = {
            "candidates": [{**registered, "fusion": fitted["fusion"]}],
            "production_version": production.version if production else None,
        }
    elif catalog.is_file():
        from flows.pipeline import pipeline_flow

        result = pipeline_flow(
            str(catalog), [], model_name, fit_budget=time_budget, filter_label_noise=filter_label_noise
        )
    else:
        _fail(f"{catalog}: no such catalog spec or dataset folder")
    _print_candidates(result)
    if as_json:
        typer.echo(json.dumps(result, default=str))


@app.command("pipeline")
def pipeline_cmd(
    spec: Annotated[Path, typer.Argument(help="Catalog spec (YAML).")],
    configs: Annotated[list[Path], typer.Argument(help="One or more training configs; each trains a candidate.")],
    model_name: Annotated[str | None, typer.Option(help="Registry model name (default: the dataset name).")] = None,
    source: Annotated[Path | None, typer.Option(help="Catalog file instead of the spec's source.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override training.epochs.")] = None,
    search: Annotated[
        Path | None, typer.Option(help="Also run a hyperparameter search (YAML) and add its best model.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
) -> None:
    """Run the Prefect `pipeline` flow: ingest -> train -> evaluate -> register (+ promote)."""
    from flows.pipeline import pipeline_flow

    result = pipeline_flow(
        str(spec),
        [str(c) for c in configs],
        model_name,
        str(source) if source else None,
        epochs,
        search=str(search) if search else None,
    )
    _print_candidates(result)
    if as_json:
        typer.echo(json.dumps(result, default=str))


def _hours(window: str) -> float:
    """'24h', '90m', '2d' or a number of hours."""
    units = {"m": 1 / 60, "h": 1.0, "d": 24.0}
    try:
        return float(window[:-1]) * units[window[-1]] if window[-1] in units else float(window)
    except (ValueError, IndexError):
        _fail(f"--window {window!r}: give a duration such as 24h, 90m or 2d")
        raise AssertionError from None  # _fail exits


@app.command("monitor")
def monitor_cmd(
    model_name: Annotated[str, typer.Argument(help="Registered model whose production version is watched.")],
    current: Annotated[
        str | None,
        typer.Option(
            help="Compare a catalog version instead of served traffic: a spec (ingested first) or a dataset folder."
        ),
    ] = None,
    window: Annotated[
        str, typer.Option(help="Served traffic of the last WINDOW (prediction log): 24h, 90m, 2d.")
    ] = "24h",
    config: Annotated[
        Path | None, typer.Option(help="Monitoring config (YAML), e.g. configs/monitoring/default.yaml.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
) -> None:
    """Run the Prefect `monitor` flow: one drift report of the production model (exit 1 on drift)."""
    hours = _hours(window)
    from flows.monitor import monitor_flow

    try:
        result = monitor_flow(model_name, window_hours=hours, current=current, config=str(config) if config else None)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    if result.get("skipped"):
        typer.echo(f"no report: {result['skipped']}")
    else:
        drifted = [c["name"] for c in result["checks"] if c["drifted"]]
        typer.echo(
            f"{model_name} v{result['model_version']}: {'DRIFT' if result['drift_detected'] else 'no drift'} "
            f"({len(drifted)} of {len(result['checks'])} checks drifted{': ' + ', '.join(drifted[:8]) if drifted else ''})"
        )
        typer.echo(
            f"  current: {result['window']} ({result['current_size']} rows), reference {result['reference_size']} rows"
        )
        typer.echo(f"  report: {result['report_path']}\n  dashboard: {result['dashboard']}")
    if as_json:
        typer.echo(json.dumps(result, default=str))
    if result["drift_detected"]:
        raise typer.Exit(1)


@app.command("tune")
def tune_cmd(
    spec_or_dataset: Annotated[Path, typer.Argument(help="Catalog spec (YAML; ingested first) or a dataset folder.")],
    search: Annotated[Path, typer.Argument(help="Search space (YAML), e.g. configs/search/default.yaml.")],
    trials: Annotated[int | None, typer.Option(help="Number of trials (default: the file's `trials`).")] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster, e.g. ray://head:10001 (default: a local Ray).")
    ] = None,
    model_name: Annotated[str | None, typer.Option(help="Registry model name (default: the dataset name).")] = None,
    retrain: Annotated[
        bool | None,
        typer.Option(
            "--retrain/--no-retrain",
            help="Retrain the best configuration on train + validation "
            "(default: the file's retrain_on_train_validation).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
) -> None:
    """Run the Prefect `tune` flow: search (Optuna + ASHA on Ray Tune), record every trial,
    register the best model with the promotion rule."""
    from components.tuning import load_search

    try:
        load_search(search)  # a bad file fails here, before Prefect or Ray start
    except ValueError as e:
        _fail(str(e))
    if not spec_or_dataset.exists():
        _fail(f"{spec_or_dataset}: no such catalog spec or dataset folder")
    from flows.tune import tune_flow

    result = tune_flow(str(spec_or_dataset), str(search), trials, address, model_name, retrain)
    rows = ["| rank | trial | run | fusion | best | epochs | status |", "|---|---|---|---|---|---|---|"]
    ranked = sorted((t for t in result["trials"] if t["best"] is not None), key=lambda t: -t["best"])
    for i, t in enumerate(ranked[:10], 1):
        status = "stopped early" if t["stopped_early"] else "interrupted" if t["interrupted"] else t["status"]
        rows.append(
            f"| {i} | {t['trial_id']} | {t['run_id']} | {t['params'].get('fusion')} | {t['best']:.4f} | "
            f"{t['epochs_run']} | {status} |"
        )
    typer.echo(
        f"\n{len(result['trials'])} trials {result['counts']}; best {result['best_trial']['metric']} on validation:\n"
    )
    typer.echo("\n".join(rows))
    decision = "promoted to production" if result["promoted"] else "kept as candidate"
    typer.echo(
        f"\nregistered: {result['name']} v{result['version']} ({decision}); "
        f"test {result['test']}\nleaderboard: {result['leaderboard']}\nplot: {result['plot']}"
    )
    if as_json:
        typer.echo(json.dumps(result, default=str))


@app.command("score")
def score_cmd(
    spec_or_dataset: Annotated[Path, typer.Argument(help="Catalog spec (YAML; ingested first) or a dataset folder.")],
    model: Annotated[str, typer.Option(help="Registry model (its production version) or a model folder.")],
    out: Annotated[
        Path | None,
        typer.Option(help="Parquet file (default ATTRFLOW_HOME/scores/<model>/<dataset>-<version>.parquet)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster (ray://head:10001, host:port; default ATTRFLOW_RAY_ADDRESS, else a local Ray)."),
    ] = None,
    features: Annotated[
        str, typer.Option(help="raw (text and images through the encoders), embeddings (the cache), or auto.")
    ] = "auto",
    workers: Annotated[int | None, typer.Option(help="Scoring actors (default: one per CPU).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Products per Ray task.")] = 512,
    in_process: Annotated[bool, typer.Option(help="Score in this process, without Ray.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the result.")] = False,
) -> None:
    """Predictions for every product of a catalog, to Parquet: one row per product (top value, score,
    published per attribute, and the full prediction as JSON), scored on Ray by the Predictor."""
    from pydantic import ValidationError

    from components.catalog import load_dataset
    from components.scoring import ScoreConfig, score_dataset

    try:
        config = ScoreConfig(features=features, workers=workers, chunk_size=chunk_size)
    except ValidationError as e:
        _fail("; ".join(f"--{'-'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}" for err in e.errors()))
    model_dir, label = _model_folder(model)
    if not spec_or_dataset.exists():
        _fail(f"{spec_or_dataset}: no such catalog spec or dataset folder")
    try:
        if spec_or_dataset.is_file():
            dataset = load_dataset(ingest(load_spec(spec_or_dataset)).dataset_dir)
        else:
            dataset = load_dataset(spec_or_dataset)
    except (SpecError, SourceError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    out = out or get_settings().home / "scores" / label / f"{dataset.name}-{dataset.version}.parquet"
    try:
        result = score_dataset(model_dir, dataset, out, config, address=address, in_process=in_process)
    except ValueError as e:
        _fail(str(e))
    typer.echo(
        f"{result.rows} products scored ({result.features}, {result.mode}, {result.workers} workers on "
        f"{max(1, len(result.nodes))} node(s)) in {result.seconds:.1f} s: {result.products_per_second:.0f}/s\n"
        f"predictions: {result.out}"
    )
    if as_json:
        payload = {k: getattr(result, k) for k in ("rows", "seconds", "features", "mode", "workers", "nodes")}
        typer.echo(json.dumps({**payload, "out": str(result.out), "model_dir": str(model_dir)}))


def _model_folder(model: str) -> tuple[Path, str]:
    """A model folder, or the production version of a registered model (with a name for paths)."""
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            _fail(f"{path} is not a saved attrflow model (no config.json)")
        return path, path.name
    from components.registry import Registry

    with Registry() as registry:
        production = registry.get_production(model)
    if production is None:
        _fail(
            f"model {model!r}: no such folder, and no production version in the registry (see `attrflow models list`)"
        )
    return Path(production.artifact_dir), f"{model}-v{production.version}"


@app.command("deploy")
def deploy_cmd(
    pool: Annotated[
        str,
        typer.Option(envvar="ATTRFLOW_WORK_POOL", help="Prefect work pool (created as a process pool if missing)."),
    ],
    source: Annotated[
        str | None,
        typer.Option(help="Git URL or folder of an attrflow checkout the workers load the flows from (from_source)."),
    ] = None,
    working_dir: Annotated[
        Path | None, typer.Option(help="Where the workers run each flow (default: this directory).")
    ] = None,
    create_pool: Annotated[bool, typer.Option(help="Create the pool when the server has none of that name.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the deployment ids.")] = False,
) -> None:
    """Register attrflow's deployments (flows/deployments.py) on a Prefect work pool at PREFECT_API_URL,
    so that the pool's workers (`prefect worker start --pool NAME`) run them."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        _fail("PREFECT_API_URL is not set: a work pool lives on a Prefect server (e.g. http://127.0.0.1:4200/api)")
    if working_dir is not None and not working_dir.is_dir():
        _fail(f"--working-dir {working_dir}: no such folder")
    from flows.deployments import deploy_to_pool

    try:
        ids = deploy_to_pool(pool, source=source, working_dir=working_dir, create_pool=create_pool)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"{len(ids)} deployments on work pool {pool!r}; start a worker: prefect worker start --pool {pool}")
    if as_json:
        typer.echo(json.dumps({"pool": pool, "deployment_ids": [str(i) for i in ids]}))


@app.command("serve")
def serve_cmd(
    model_name: Annotated[
        str | None, typer.Argument(help="Registry model to serve (its production version, followed as it changes).")
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="Serve this model folder instead of a registered model.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes it beyond this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 3000,
) -> None:
    """Start the BentoML endpoint (serving/service.py) in this terminal: POST /predict, /predict_batch, GET /model.
    An extraction model gets serving/extraction.py's endpoint: POST /extract."""
    import os
    import sys

    from components.models.io import model_task

    if (model_name is None) == (model_dir is None):
        _fail("give a MODEL_NAME (the registry's production version) or --model-dir, not both")
    if model_dir is not None and not (model_dir / "config.json").is_file():
        _fail(f"{model_dir} is not a saved attrflow model (no config.json)")
    if model_name is not None:
        from components.registry import Registry

        with Registry() as registry:
            production = registry.get_production(model_name)
        if production is None:
            _fail(f"model {model_name!r} has no production version (see `attrflow models list`)")
        model_folder = Path(production.artifact_dir)
    else:
        model_folder = model_dir
    service = (
        "serving.extraction:ExtractionService"
        if model_task(model_folder) == "extraction"
        else "serving.service:AttributeService"
    )
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": os.environ.get("BENTOML_DO_NOT_TRACK", "True")}
    env["ATTRFLOW_HOME"] = str(get_settings().home.resolve())  # the server may run from another folder
    if model_dir is not None:
        env["ATTRFLOW_MODEL_DIR"] = str(model_dir.resolve())
    else:
        env["ATTRFLOW_MODEL_NAME"] = model_name
    command = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        service,
        "--host",
        host,
        "--port",
        str(port),
    ]
    typer.echo(f"serving on http://{host}:{port} (Ctrl-C stops it): {' '.join(command[2:])}")
    os.execvpe(sys.executable, command, env)


def _print_candidates(result: dict) -> None:
    rows = ["| version | fusion | attribute | macro-F1 | R@P95 | decision |", "|---|---|---|---|---|---|"]
    for c in result["candidates"]:
        decision = "promoted" if c["promoted"] else "candidate"
        if c["metrics"].get("task") == "extraction":  # values by the counting rule, per attribute
            for attr, m in c["metrics"]["per_attribute"].items():
                rows.append(f"| v{c['version']} | extraction | {attr} | value F1 {m['f1']:.3f} | - | {decision} |")
            continue
        for attr, m in c["metrics"]["attributes"].items():
            rows.append(
                f"| v{c['version']} | {c['fusion']} | {attr} | {m['f1_macro']:.3f} | {m['r_at_p95']:.3f} | {decision} |"
            )
    typer.echo("\nTest split:\n\n" + "\n".join(rows))
    typer.echo(f"\nproduction model: {result['candidates'][0]['name']} v{result['production_version']}")


@app.command("demo")
def demo(
    n: Annotated[int, typer.Option(help="Number of demo products.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    time_budget: Annotated[
        str, typer.Option(help="Budget of the automatic model (`attrflow fit`); 0 = none, train --fusions only.")
    ] = "3m",
    fusions: Annotated[
        str, typer.Option(help="Comma-separated fusion configs to train too (configs/models/<name>.yaml).")
    ] = "",
    configs_dir: Annotated[
        Path | None, typer.Option("--configs", help="The configs/ folder (default: ./configs, else the checkout's).")
    ] = None,
) -> None:
    """The main job on the built-in demo catalog, as a Prefect flow run: generate the catalog,
    ingest, fit the automatic model (and train --fusions), evaluate, register and promote the best."""
    from components.training.fit import parse_duration

    folder = _configs_dir(configs_dir)
    configs = [folder / "models" / f"{name}.yaml" for name in fusions.split(",") if name]
    try:
        fit_budget = time_budget if parse_duration(time_budget) > 0 else None
    except ValueError as e:
        _fail(f"--time-budget: {e}")
    if fit_budget is None and not configs:
        _fail("nothing to train: give a --time-budget above 0 or --fusions")
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        _fail(f"no such model config: {', '.join(missing)} (--fusions names files in {folder / 'models'})")
    from flows.pipeline import pipeline_flow

    home = get_settings().home
    spec_path = write_demo_catalog(home / "demo-catalog", n=n, seed=seed)
    typer.echo(f"demo catalog: {n} products in {home / 'demo-catalog'}")
    configs = [str(c) for c in configs]
    result = pipeline_flow(str(spec_path), configs, model_name="demo", fit_budget=fit_budget)
    from flows.features import materialize_flow

    materialize_flow("demo")  # the production model's embeddings into the feature store: predict by id
    _print_candidates(result)
    if result.get("bento"):
        typer.echo(f"Bento: {result['bento']}")
    typer.echo("\nServe it: make serve   (or: attrflow serve demo; then see the README's curl call)")
    typer.echo("By catalog id: attrflow predict --id P000001")


if __name__ == "__main__":
    app()
