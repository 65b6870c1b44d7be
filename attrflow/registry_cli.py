"""`attrflow models ...` and `attrflow runs ...`: the registry from the command line.

The database is the settings' one (ATTRFLOW_DB_URL, else ATTRFLOW_HOME/registry.db).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, NoReturn

import typer

from components.registry import PRIMARY_METRIC, Registry, RegistryError

models_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Registered model versions.")
runs_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Recorded runs (training, tuning, pipelines).")


def _fail(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(2)


def _when(t: datetime | None) -> str:
    return f"{t:%Y-%m-%d %H:%M}" if t else "-"


def _score(metrics: dict[str, Any] | None) -> str:
    value = (metrics or {}).get(PRIMARY_METRIC)
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    for row in [headers, ["-" * w for w in widths], *rows]:
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@models_app.command("list")
def list_models(
    name: Annotated[str | None, typer.Argument(help="Only this model's versions.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the versions.")] = False,
) -> None:
    """Model versions with their stage, score and the reason for their promotion (or not)."""
    with Registry() as registry:
        versions = registry.list_model_versions(name)
    if name is not None and not versions:
        _fail(f"no model named {name!r}")
    if not versions:
        typer.echo("no model versions registered")
    else:
        _table(
            ["name", "version", "stage", PRIMARY_METRIC, "run", "created", "promoted", "decision"],
            [
                [
                    v.name,
                    str(v.version),
                    v.stage,
                    _score(v.metrics),
                    str(v.run_id),
                    _when(v.created_at),
                    _when(v.promoted_at),
                    v.decision or "",
                ]
                for v in versions
            ],
        )
    if as_json:
        typer.echo(json.dumps({"model_versions": [v.model_dump(mode="json") for v in versions]}))


@models_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version to make production.")],
    reason: Annotated[str, typer.Option(help="Why, recorded in the version's decision.")] = "manual",
) -> None:
    """Make a version production by hand (no score check); the previous production is archived."""
    try:
        with Registry() as registry:
            record = registry.promote(name, version, reason)
    except RegistryError as e:
        _fail(str(e))
    typer.echo(f"{record.name} v{record.version} is production")


@models_app.command("rollback")
def rollback(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Undo the last promotion: the previous production version comes back."""
    try:
        with Registry() as registry:
            record = registry.rollback(name)
    except RegistryError as e:
        _fail(str(e))
    typer.echo(f"rolled back: {record.name} v{record.version} is production again")


@runs_app.command("list")
def list_runs(
    kind: Annotated[str | None, typer.Option(help="Only runs of this kind (train, tune-trial, pipeline, ...).")] = None,
    limit: Annotated[int, typer.Option(help="How many of the most recent runs.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON line of the runs.")] = False,
) -> None:
    """The most recent runs first."""
    with Registry() as registry:
        runs = registry.list_runs(kind, limit)
    if not runs:
        typer.echo("no runs recorded")
    else:
        _table(
            ["id", "kind", "status", "started", "seconds", "epochs", PRIMARY_METRIC, "error"],
            [
                [
                    str(r.id),
                    r.kind,
                    r.status,
                    _when(r.started_at),
                    f"{(r.ended_at - r.started_at).total_seconds():.0f}" if r.ended_at else "-",
                    str(len(r.epoch_metrics)),
                    _score(r.metrics),
                    (r.error or "").splitlines()[0][:60] if r.error else "",
                ]
                for r in runs
            ],
        )
    if as_json:
        typer.echo(json.dumps({"runs": [r.model_dump(mode="json") for r in runs]}))
