"""The `attrflow` command: typed subcommands over `components` (and, later, `flows`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from components.catalog import SpecError, ingest, load_spec
from components.catalog.demo import write_demo_catalog
from components.catalog.readers import SourceError
from components.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Multimodal product attribute extraction.")


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


@app.command("demo")
def demo(
    n: Annotated[int, typer.Option(help="Number of demo products.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """The main job on the built-in demo catalog: generate it, then ingest it."""
    out = get_settings().home / "demo-catalog"
    spec_path = write_demo_catalog(out, n=n, seed=seed)
    typer.echo(f"demo catalog: {n} products in {out}")
    ingest_cmd(spec_path, source=None, as_json=False)


if __name__ == "__main__":
    app()
