"""The catalog spec: a YAML file that says which column of a catalog file is what.

Example (configs/catalogs/demo.yaml)::

    name: demo
    source: catalog.csv              # CSV, Parquet or JSONL; relative to this YAML file
    id_column: id
    title_column: title
    description_column: description  # optional
    image_template: "images/{id}.jpg" # or image_column: <column holding a path>
    attributes:
      - {name: category, column: category, kind: multiclass}
      - {name: colour, column: colour, kind: multilabel, separator: "|",
         values: [black, white, red]}
    split: {seed: 0, validation: 0.1, test: 0.1}

Value-extraction catalogs (configs/catalogs/ae-110k.yaml) name a `values_column` instead of (or
besides) attribute columns: per row an object `{attribute: {value: score} | [values] | value}`,
"n/a" or empty for an attribute the product has no value for, so each row (each category) names
its own attribute set. Every named value must be written in the title (else the row is
quarantined); such a catalog trains `model: {task: extraction}` configs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.yaml_files import describe_errors, read_yaml_mapping

AttributeKind = Literal["multiclass", "multilabel"]
SourceFormat = Literal["csv", "parquet", "jsonl"]

_FORMATS: dict[str, SourceFormat] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class SpecError(ValueError):
    """A catalog spec that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttributeSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    column: str
    kind: AttributeKind = "multiclass"
    separator: str | None = None  # splits a multi-valued cell ("black|white"); multilabel only
    values: list[str] | None = None  # allowed values; a label outside them quarantines the row

    @model_validator(mode="after")
    def _check(self) -> AttributeSpec:
        if self.separator is not None and self.kind != "multilabel":
            raise ValueError(f"attribute {self.name!r}: separator only applies to kind multilabel")
        if self.separator == "":
            raise ValueError(f"attribute {self.name!r}: separator must not be empty")
        if self.values is not None:
            if not self.values:
                raise ValueError(f"attribute {self.name!r}: values, when given, must not be empty")
            dupes = sorted({v for v in self.values if self.values.count(v) > 1})
            if dupes:
                raise ValueError(f"attribute {self.name!r}: repeated allowed values {dupes}")
        return self


class SplitSpec(_Strict):
    seed: int = 0
    validation: float = Field(0.1, ge=0.0, lt=1.0)
    test: float = Field(0.1, ge=0.0, lt=1.0)
    # Attributes to stratify on; default: all of them.
    stratify_on: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> SplitSpec:
        if self.validation + self.test >= 1.0:
            raise ValueError("split: validation + test must leave some rows for training")
        return self


class CatalogSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    source: Path
    format: SourceFormat | None = None
    id_column: str | None  # null: the row's number in the file is its id
    title_column: str
    description_column: str | None = None
    image_column: str | None = None
    image_template: str | None = None
    # Image paths are relative to the catalog's folder and may not leave it, through `..`, an
    # absolute path or a link. Folders named here (relative to the spec, or absolute) are trusted
    # too: a link into them is followed (e.g. `images/` linked to a data disk), and an absolute
    # path inside one of them is accepted.
    image_roots: list[Path] = []
    # An ingest that accepts a smaller share of the rows than this fails instead of writing a
    # dataset: it is far more likely a wrong spec than a catalog that bad.
    min_accepted_share: float = Field(0.5, ge=0.0, le=1.0)
    attributes: list[AttributeSpec] = []
    values_column: str | None = None  # the value-extraction layout (module docstring)
    # Cell texts that mean "no value" (pandas' usual markers); an empty cell always does.
    missing_values: list[str] = ["NA", "N/A", "NaN", "nan", "null", "NULL", "None"]
    split: SplitSpec = SplitSpec()

    @field_validator("image_template")
    @classmethod
    def _template_has_field(cls, v: str | None) -> str | None:
        if v is not None and not re.search(r"\{[A-Za-z_][A-Za-z0-9_]*\}", v):
            raise ValueError("image_template must contain a column placeholder such as {id}")
        return v

    @model_validator(mode="after")
    def _check(self) -> CatalogSpec:
        if self.image_column and self.image_template:
            raise ValueError("give image_column or image_template, not both")
        if not self.attributes and not self.values_column:
            raise ValueError("attributes: name at least one attribute column (or a values_column)")
        names = [a.name for a in self.attributes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"attribute names repeated: {dupes}")
        if self.split.stratify_on:
            unknown = sorted(set(self.split.stratify_on) - set(names))
            if unknown:
                raise ValueError(f"split.stratify_on names unknown attributes {unknown}")
        if self.format is None and self.source.suffix.lower() not in _FORMATS:
            raise ValueError(
                f"cannot tell the format of source {str(self.source)!r} from its extension; "
                f"set format to one of csv, parquet, jsonl"
            )
        return self

    @property
    def source_format(self) -> SourceFormat:
        return self.format or _FORMATS[self.source.suffix.lower()]

    def attribute(self, name: str) -> AttributeSpec:
        for a in self.attributes:
            if a.name == name:
                return a
        raise KeyError(name)

    def with_source(self, source: Path) -> CatalogSpec:
        return self.model_copy(update={"source": Path(source).resolve()})


def load_spec(path: str | Path) -> CatalogSpec:
    """Read and validate a spec; `source` is resolved relative to the YAML file's folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "catalog spec", SpecError)
    try:
        spec = CatalogSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(f"{path}: invalid catalog spec: {describe_errors(e)}") from None
    if not spec.source.is_absolute():
        spec = spec.with_source(path.parent / spec.source)
    roots = [r if r.is_absolute() else (path.parent / r).absolute() for r in spec.image_roots]
    return spec.model_copy(update={"image_roots": roots})
