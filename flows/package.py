"""Flow `package`: the production version of a registered model -> a Bento, built offline.

The version's folder goes into BentoML's model store as `attrflow-<name>:v<version>` (once:
versions are immutable); the Bento takes its service, code and Python packages from
`serving/bentofile.yaml` (`lock_packages: false`, so nothing is resolved online), references
that model and sets ATTRFLOW_BENTO_MODEL, so the service in the Bento serves exactly that
version. The service is the endpoint of the model's task: the classification endpoint, or the
extraction one for an extraction model. `bentoml containerize <tag>` turns it into an image where Docker exists.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from components.models.io import model_task
from components.registry import Registry, RegistryError
from flows.common import artifact_key

BENTOFILE = Path(__file__).resolve().parent.parent / "serving" / "bentofile.yaml"
# The endpoint of each kind of model (components.models.io.model_task); bentofile.yaml names the first.
SERVICES = {
    "classification": "serving.service:AttributeService",
    "extraction": "serving.extraction:ExtractionService",
}


def bento_name(model_name: str) -> str:
    # Bento and model tags: lowercase letters, digits, `_ . -`.
    return f"attrflow-{model_name.lower()}"


@task
def store_model(model_name: str, version: int, artifact_dir: str) -> str:
    """The registered folder as a BentoML model (copied once; a stored tag is never rewritten)."""
    import bentoml

    tag = f"{bento_name(model_name)}:v{version}"
    try:
        return str(bentoml.models.get(tag).tag)
    except bentoml.exceptions.NotFound:
        pass
    with bentoml.models.create(
        tag, labels={"attrflow_model": model_name}, metadata={"version": version, "artifact_dir": str(artifact_dir)}
    ) as stored:
        shutil.copytree(artifact_dir, stored.path, dirs_exist_ok=True)
    return str(stored.tag)


@task
def build_bento(model_name: str, version: int, model_tag: str, task: str = "classification") -> str:
    """serving/bentofile.yaml plus this model, its name and version, and the endpoint of its task:
    built from a copy of that file."""
    import bentoml

    options = yaml.safe_load(BENTOFILE.read_text())
    options["service"] = SERVICES[task]
    options["models"] = [*options.get("models", []), model_tag]
    options["envs"] = [
        *options.get("envs", []),
        {"name": "ATTRFLOW_MODEL_NAME", "value": model_name},
        {"name": "ATTRFLOW_BENTO_MODEL", "value": model_tag},
    ]
    options["labels"] = {**options.get("labels", {}), "attrflow_model": model_name, "attrflow_version": str(version)}
    with tempfile.TemporaryDirectory() as tmp:
        bentofile = Path(tmp) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(options, sort_keys=False))
        bento = bentoml.bentos.build_bentofile(
            str(bentofile), name=bento_name(model_name), version=f"v{version}", build_ctx=str(BENTOFILE.parent.parent)
        )
    return str(bento.tag)


@flow(name="package", log_prints=True)
def package_flow(model_name: str) -> dict:
    """Build the Bento of `model_name`'s production version (reused if that version was packaged)."""
    with Registry() as registry:
        production = registry.get_production(model_name)
    if production is None:
        raise RegistryError(f"model {model_name!r} has no production version to package")
    model_tag = store_model(model_name, production.version, production.artifact_dir)
    bento_tag = _existing_bento(model_name, production.version) or build_bento(
        model_name, production.version, model_tag, model_task(production.artifact_dir)
    )
    create_markdown_artifact(
        f"# Bento for {model_name} v{production.version}\n\n"
        f"Bento: `{bento_tag}` (model `{model_tag}`)\n\n"
        f"Serve it: `bentoml serve {bento_tag}`; as a container image: `bentoml containerize {bento_tag}`\n",
        key=artifact_key("bento", model_name),
        description="The Bento built from the production model",
    )
    print(f"{model_name} v{production.version}: Bento {bento_tag}")
    return {"name": model_name, "version": production.version, "bento": bento_tag, "model": model_tag}


def _existing_bento(model_name: str, version: int) -> str | None:
    import bentoml

    try:
        return str(bentoml.bentos.get(f"{bento_name(model_name)}:v{version}").tag)
    except bentoml.exceptions.NotFound:
        return None
