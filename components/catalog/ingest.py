"""Ingestion: catalog file + spec -> a versioned dataset, every row accepted or quarantined.

Output, under `ATTRFLOW_HOME/datasets/<name>/<version>/`:

- `items.parquet`      accepted products: id, title, description, image_path,
                       image_sha256, one column per attribute (str, list[str] or null);
                       with a spec's values_column also `values` (JSON: attribute -> [values],
                       [] for "n/a") and `spans` (JSON: [{attribute, start, end}] in the title)
- `splits.parquet`     id -> train | validation | test (a product keeps its split from the
                       newest earlier version; only new products are assigned)
- `vocab.json`         per attribute: kind and the ordered list of values
- `quarantine.csv`     row, id, reason, detail for every rejected row
- `manifest.json`      source, content hash, counts, reasons, the spec

The version is a hash of the content (source bytes, image bytes, spec), so
ingesting the same catalog twice lands in the same folder and writes nothing new.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from components.catalog.readers import cell_text, read_records
from components.catalog.spans import locate_values
from components.catalog.spec import AttributeSpec, CatalogSpec
from components.catalog.splits import SPLITS, assign_splits
from components.catalog.value_benchmarks import parse_values
from components.settings import get_settings

# Reasons a row is quarantined. Keys are stable (tests, dashboards); values explain.
REASONS = {
    "malformed_row": "the reader could not parse the row",
    "missing_id": "the id is missing or empty",
    "duplicate_id": "an earlier row has the same id (the first is kept)",
    "label_not_allowed": "a label is not among the attribute's allowed values",
    "image_outside_catalog": "the image path leaves the catalog's folder (and every trusted image root)",
    "no_text_or_image": "the product has neither a title/description nor an image",
    "image_missing": "the image file does not exist",
    "image_unreadable": "the image file cannot be decoded as an image",
    "malformed_values": "the values column does not hold attribute -> values",
    "value_not_in_text": "a named value is not written in the title",
}

# What to check first when most rows end up quarantined for one reason.
HINTS = {
    "image_outside_catalog": "if the images live elsewhere (a linked folder or another disk), name that folder "
    "in the spec's `image_roots:` to trust it",
    "image_missing": "check the image column or image_template: paths are relative to the catalog file's folder",
    "label_not_allowed": "check the attributes' `values:` lists in the spec",
    "missing_id": "check `id_column` in the spec",
    "malformed_row": "check the file's format and delimiter",
    "no_text_or_image": "check `title_column`, `description_column` and the image settings in the spec",
    "malformed_values": "check `values_column` in the spec",
    "value_not_in_text": "check `title_column`: values are located in the title",
}

RESERVED_COLUMNS = {"id", "title", "description", "image_path", "image_sha256", "split", "values", "spans"}


class IngestResult(BaseModel):
    name: str
    version: str
    dataset_dir: Path
    rows: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    splits: dict[str, int]
    reused: bool  # True when this exact content had been ingested before
    seconds: float


class IngestRejected(ValueError):
    """Too few rows accepted: no dataset is written; the quarantine report says why for every row."""


class _Quarantine:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, row: int, id_: str, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        self.rows.append({"row": row, "id": id_, "reason": reason, "detail": detail})


def ingest(
    spec: CatalogSpec, source: Path | None = None, home: Path | None = None, workers: int | None = None
) -> IngestResult:
    """Validate every row of the catalog and write (or reuse) the dataset version."""
    start = time.perf_counter()
    if source is not None:
        spec = spec.with_source(source)
    clash = RESERVED_COLUMNS & {a.name for a in spec.attributes}
    if clash:
        raise ValueError(f"attribute names {sorted(clash)} clash with dataset columns; rename them")
    catalog_root = spec.source.parent.absolute()
    # Where images may resolve to: the catalog's folder and the spec's image roots, links followed.
    trusted = [catalog_root.resolve(), *(Path(r).resolve() for r in spec.image_roots)]
    quarantine = _Quarantine()
    candidates: list[dict[str, Any]] = []
    seen_ids: dict[str, int] = {}
    n_rows = 0

    for rec in read_records(spec.source, spec.source_format):
        n_rows += 1
        if rec.values is None:
            quarantine.add(rec.row, "", "malformed_row", rec.error or "")
            continue
        item, reason, detail = _parse_row(rec.row, rec.values, spec, catalog_root, trusted)
        id_ = item.get("id", "")
        if reason is None and id_ in seen_ids:
            reason, detail = "duplicate_id", f"id {id_!r} first seen in row {seen_ids[id_]}"
        if reason is not None:
            quarantine.add(rec.row, id_, reason, detail)
            continue
        seen_ids[id_] = rec.row
        item["row"] = rec.row
        candidates.append(item)

    # Images are the slow part: read each once, hash it and decode it, in threads
    # (Pillow releases the GIL while decoding).
    paths = [c["image_path"] for c in candidates]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        checks = list(pool.map(_check_image, paths, chunksize=64))
    accepted = []
    for item, (sha, reason, detail) in zip(candidates, checks, strict=True):
        if reason is not None:
            quarantine.add(item["row"], item["id"], reason, detail)
        else:
            item["image_sha256"] = sha
            accepted.append(item)

    items = _items_frame(accepted, spec)
    vocab = _vocabularies(items, spec.attributes)
    home = home or get_settings().home
    split, kept_from = _assign_splits(items, spec, home / "datasets" / spec.name)
    version = _content_version(spec, items)
    reasons = dict(sorted(Counter(q["reason"] for q in quarantine.rows).items()))
    splits = {s: int((split == s).sum()) for s in SPLITS}
    assert n_rows == len(items) + len(quarantine.rows), "every row is accepted or quarantined"

    if n_rows == 0 or len(items) < spec.min_accepted_share * n_rows:
        _reject(spec, n_rows, len(items), quarantine, home / "datasets" / spec.name)
    dataset_dir = (home / "datasets" / spec.name / version).resolve()
    reused = (dataset_dir / "manifest.json").is_file()
    if not reused:
        manifest = {
            "name": spec.name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": str(spec.source),
            "source_sha256": _file_sha256(spec.source),
            "catalog_root": str(catalog_root),
            "counts": {
                "rows": n_rows,
                "accepted": len(items),
                "quarantined": len(quarantine.rows),
                "with_image": int(items["image_path"].notna().sum()),
                "with_text": int(((items["title"] != "") | (items["description"] != "")).sum()),
                "splits": splits,
            },
            "splits_kept_from": kept_from,
            "reasons": reasons,
            "attributes": {
                a.name: {
                    "kind": a.kind,
                    "values": len(vocab[a.name]["values"]),
                    "labelled": int(items[a.name].notna().sum()),
                }
                for a in spec.attributes
            },
            "spec": spec.model_dump(mode="json"),
        }
        if spec.values_column:  # attribute -> products that name it / that have a value for it
            named = [json.loads(v) for v in items["values"]]
            manifest["values"] = {
                a: {"named": sum(a in n for n in named), "with_value": sum(bool(n.get(a)) for n in named)}
                for a in sorted({a for n in named for a in n})
            }
        _write_dataset(dataset_dir, items, split, vocab, quarantine, manifest)
    return IngestResult(
        name=spec.name,
        version=version,
        dataset_dir=dataset_dir,
        rows=n_rows,
        accepted=len(items),
        quarantined=len(quarantine.rows),
        reasons=reasons,
        splits=splits,
        reused=reused,
        seconds=round(time.perf_counter() - start, 2),
    )


def _assign_splits(items: pd.DataFrame, spec: CatalogSpec, name_dir: Path) -> tuple[Any, str | None]:
    """The products' splits, and the earlier version they were kept from (None: all assigned now).

    Splits are sticky across versions of a dataset: a product of the newest earlier version (with
    the same split settings) keeps its split there, and only new products are assigned, stratified
    among themselves. So a product a production model trained on never lands in a later version's
    test split, where the challenger is compared with it (flows/register.py)."""
    labels = items[[a.name for a in spec.attributes]]
    previous = _previous_version(name_dir, spec)
    if previous is None:
        return assign_splits(labels, spec.attributes, spec.split), None
    earlier = pd.read_parquet(previous / "splits.parquet").set_index("id")["split"]
    out = items["id"].map(earlier).to_numpy(dtype=object)
    new = pd.isna(out)
    if new.any():
        out[new] = assign_splits(labels[new].reset_index(drop=True), spec.attributes, spec.split)
    return out, previous.name


def _previous_version(name_dir: Path, spec: CatalogSpec) -> Path | None:
    """The newest version of this dataset written so far with the same split settings, if any."""
    found = []
    for manifest_path in name_dir.glob("*/manifest.json"):
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            continue  # a folder being written or damaged: not a version to keep splits from
        if manifest.get("spec", {}).get("split") == spec.split.model_dump(mode="json"):
            found.append((manifest.get("created_at", ""), manifest_path.stat().st_mtime, manifest_path.parent))
    return max(found)[2] if found else None


def _reject(spec: CatalogSpec, n_rows: int, n_accepted: int, quarantine: _Quarantine, name_dir: Path) -> None:
    """Keep the quarantine report (nothing is lost) and fail with the dominant reason and a hint."""
    if n_rows == 0:
        raise IngestRejected(f"{spec.source}: the catalog has no rows")
    name_dir.mkdir(parents=True, exist_ok=True)
    report = name_dir / f"rejected-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-quarantine.csv"
    frame = pd.DataFrame(quarantine.rows, columns=["row", "id", "reason", "detail"])
    frame.to_csv(report, index=False)
    reason, count = Counter(frame["reason"]).most_common(1)[0]
    first = frame[frame["reason"] == reason].iloc[0]
    raise IngestRejected(
        f"{spec.source}: only {n_accepted} of {n_rows} rows accepted, below min_accepted_share "
        f"{spec.min_accepted_share:g}; no dataset written. Most rows ({count}) were quarantined as {reason} "
        f"({REASONS[reason]}), e.g. row {first['row']}: {first['detail']}. Hint: {HINTS.get(reason, 'see the report')}. "
        f"Every row's reason: {report}"
    )


def _image_path(ref: str, catalog_root: Path, spec: CatalogSpec, trusted: list[Path]) -> tuple[str | None, str]:
    """(absolute path, "") for an image reference, or (None, why it is refused)."""
    ref_path = Path(ref)
    if ".." in ref_path.parts:
        return None, f"{ref!r} climbs out with '..'"
    if ref_path.is_absolute():
        if not any(ref_path.is_relative_to(Path(r).absolute()) for r in spec.image_roots):
            return None, f"{ref!r} is an absolute path outside the spec's image_roots"
        path = ref_path
    else:
        path = catalog_root / ref_path
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in trusted):
        return None, f"{ref!r} resolves to {resolved} through a link; name that folder in image_roots to trust it"
    return str(resolved), ""


def _parse_row(
    row: int, values: dict[str, Any], spec: CatalogSpec, catalog_root: Path, trusted: list[Path]
) -> tuple[dict[str, Any], str | None, str]:
    """One row -> (item, reason, detail); reason is None when the row passes the cheap checks."""
    missing = set(spec.missing_values)
    values = {k: (None if isinstance(v, str) and v.strip() in missing else v) for k, v in values.items()}
    id_ = cell_text(values.get(spec.id_column)) if spec.id_column else str(row)
    item: dict[str, Any] = {"id": id_}
    if not id_:
        return item, "missing_id", f"column {spec.id_column!r} is empty"
    for attr in spec.attributes:
        label, bad = _parse_label(values.get(attr.column), attr)
        if bad:
            return item, "label_not_allowed", f"{attr.name}: {bad!r} is not an allowed value"
        item[attr.name] = label
    item["title"] = cell_text(values.get(spec.title_column))
    item["description"] = cell_text(values.get(spec.description_column)) if spec.description_column else ""
    image_ref = ""
    if spec.image_column:
        image_ref = cell_text(values.get(spec.image_column))
    elif spec.image_template:
        try:
            image_ref = spec.image_template.format_map({k: cell_text(v) for k, v in values.items()})
        except KeyError as e:
            return item, "malformed_row", f"image_template needs column {e.args[0]!r}"
    item["image_path"] = None
    if image_ref:
        path, why = _image_path(image_ref, catalog_root, spec, trusted)
        if path is None:
            return item, "image_outside_catalog", why
        item["image_path"] = path
    if not (item["title"] or item["description"] or item["image_path"]):
        return item, "no_text_or_image", "title, description and image are all empty"
    if spec.values_column:
        return _with_values(item, values.get(spec.values_column), spec.values_column)
    return item, None, ""


def _with_values(item: dict[str, Any], cell: Any, column: str) -> tuple[dict[str, Any], str | None, str]:
    """A value-extraction row: its named values, located in the title (word boundaries, or inside a
    token such as "Letter" in "Letters"; attributes may share text)."""
    if isinstance(cell, str):  # CSV / Parquet hold the object as JSON text
        try:
            cell = json.loads(cell)
        except ValueError as e:
            return item, "malformed_values", f"{column}: invalid JSON: {e}"
    try:
        named = parse_values(cell)
    except ValueError as e:
        return item, "malformed_values", f"{column}: {e}"
    spans, problems = locate_values(item["title"], named, exclusive=False, widen=True)
    if problems:
        attr, why = next(iter(problems.items()))
        return item, "value_not_in_text", f"{attr}: {why}"
    item["values"] = json.dumps(named)
    item["spans"] = json.dumps([{"attribute": s.attribute, "start": s.start, "end": s.end} for s in spans])
    return item, None, ""


def _parse_label(value: Any, attr: AttributeSpec) -> tuple[str | list[str] | None, str | None]:
    """Cell -> (label, first disallowed value). Multiclass: str; multilabel: list[str]; None if empty."""
    if attr.kind == "multilabel":
        if isinstance(value, (list, tuple)):
            parts = [cell_text(v) for v in value]
        else:
            text = cell_text(value)
            parts = text.split(attr.separator) if attr.separator else [text]
        label: list[str] = list(dict.fromkeys(p.strip() for p in parts if p and p.strip()))
        if not label:
            return None, None
        bad = next((v for v in label if attr.values and v not in attr.values), None)
        return label, bad
    text = cell_text(value)
    if not text:
        return None, None
    return text, (text if attr.values and text not in attr.values else None)


def _check_image(path: str | None) -> tuple[str | None, str | None, str]:
    """(sha256, reason, detail) for one image path; no path means no image, which is fine."""
    if path is None:
        return None, None, ""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "image_missing", f"{path} does not exist"
    except IsADirectoryError:
        return None, "image_unreadable", f"{path} is a directory"
    except OSError as e:
        return None, "image_unreadable", f"{path}: {e.strerror}"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (128, 128))  # decode big JPEGs at reduced scale: still a full read
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return None, "image_unreadable", f"{path}: {e}"
    return hashlib.sha256(data).hexdigest(), None, ""


def _items_frame(accepted: list[dict[str, Any]], spec: CatalogSpec) -> pd.DataFrame:
    columns = ["id", "title", "description", "image_path", "image_sha256"] + [a.name for a in spec.attributes]
    columns += ["values", "spans"] if spec.values_column else []
    df = pd.DataFrame(accepted, columns=["row", *columns])
    return df.drop(columns="row").reset_index(drop=True)


def _vocabularies(items: pd.DataFrame, attributes: list[AttributeSpec]) -> dict[str, dict[str, Any]]:
    vocab = {}
    for attr in attributes:
        if attr.values is not None:
            values = list(attr.values)
        else:
            seen: set[str] = set()
            for cell in items[attr.name].dropna():
                seen.update(cell if isinstance(cell, list) else [cell])
            values = sorted(seen)
        vocab[attr.name] = {"kind": attr.kind, "values": values}
    return vocab


def _content_version(spec: CatalogSpec, items: pd.DataFrame) -> str:
    h = hashlib.sha256()
    h.update(_file_sha256(spec.source).encode())
    h.update(json.dumps(spec.model_dump(mode="json", exclude={"source"}), sort_keys=True).encode())
    for sha in items["image_sha256"].fillna(""):
        h.update(sha.encode())
    return h.hexdigest()[:12]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_dataset(
    dataset_dir: Path,
    items: pd.DataFrame,
    split: Any,
    vocab: dict[str, Any],
    quarantine: _Quarantine,
    manifest: dict[str, Any],
) -> None:
    """Write into a temporary folder beside the target, then rename: readers never see half a dataset."""
    dataset_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dataset_dir.parent))
    try:
        items.to_parquet(tmp / "items.parquet", index=False)
        pd.DataFrame({"id": items["id"], "split": split}).to_parquet(tmp / "splits.parquet", index=False)
        pd.DataFrame(quarantine.rows, columns=["row", "id", "reason", "detail"]).to_csv(
            tmp / "quarantine.csv", index=False
        )
        (tmp / "vocab.json").write_text(json.dumps(vocab, indent=1))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            tmp.rename(dataset_dir)
        except OSError:
            if not (dataset_dir / "manifest.json").is_file():  # not a concurrent twin: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
