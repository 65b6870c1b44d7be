"""Reading attrflow's YAML files (catalog specs, training configs, search spaces) so that
every error names the file and the field."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def read_yaml_mapping(
    path: Path, what: str, error: type[ValueError] = ValueError, empty_ok: bool = False
) -> dict[str, Any]:
    """The file's top-level mapping; `error` (naming the file and `what` it should be) otherwise."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: {what} is not valid YAML: {e}") from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise error(f"{path}: a {what} must be a mapping, got {type(raw).__name__}")
    return raw


def describe_errors(e: ValidationError, skip: Collection[str] = ()) -> str:
    """'field.path: message; ...' for every problem pydantic found (`skip`: location parts to
    leave out, such as the tags of a discriminated union)."""
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"] if x not in skip)
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}" if loc else msg)  # a whole-object check has no field
    return "; ".join(out)
