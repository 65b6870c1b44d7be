from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import HEADER, good_rows, spec_for, write_csv, write_image
from typer.testing import CliRunner

from attrflow.cli import app
from components.catalog import IngestRejected, SpecError, ingest, load_dataset, load_spec


def _bad_row(kind: str, root) -> tuple[dict | str, str]:
    """A row that must be quarantined for `kind`; returns (row, expected id in quarantine)."""
    base = {"id": "bad", "title": "blue shirt", "description": "", "image": "", "colour": "blue", "size": "L"}
    if kind == "missing_id":
        return {**base, "id": "  "}, ""
    if kind == "duplicate_id":
        return {**base, "id": "g0"}, "g0"
    if kind == "no_text_or_image":
        return {**base, "title": "", "description": ""}, "bad"
    if kind == "image_missing":
        return {**base, "image": "images/nope.png"}, "bad"
    if kind == "image_unreadable":
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "images" / "junk.png").write_bytes(b"\x89PNG but not really an image")
        return {**base, "image": "images/junk.png"}, "bad"
    if kind == "image_outside_catalog":
        write_image(root.parent / "elsewhere.png")
        return {**base, "image": "../elsewhere.png"}, "bad"
    if kind == "label_not_allowed":
        return {**base, "colour": "blue|teal"}, "bad"
    raise AssertionError(kind)


REASONS = [
    "missing_id",
    "duplicate_id",
    "no_text_or_image",
    "image_missing",
    "image_unreadable",
    "image_outside_catalog",
    "label_not_allowed",
]


@pytest.mark.parametrize("reason", REASONS)
def test_each_reason_quarantines_exactly_the_bad_row(tmp_path, reason):
    root = tmp_path / "cat"
    rows = good_rows(root, 3)
    bad, bad_id = _bad_row(reason, root)
    rows.insert(1, bad)  # in the middle, so the row number is checked
    result = ingest(spec_for(write_csv(root, rows)))

    assert (result.rows, result.accepted, result.quarantined) == (4, 3, 1)
    assert result.reasons == {reason: 1}
    q = pd.read_csv(result.dataset_dir / "quarantine.csv", keep_default_na=False, dtype=str)
    assert q.to_dict("records")[0]["reason"] == reason
    assert q.to_dict("records")[0]["row"] == "2"
    assert q.to_dict("records")[0]["id"] == bad_id
    accepted = load_dataset(result.dataset_dir).items
    assert sorted(accepted["id"]) == ["g0", "g1", "g2"]


def test_malformed_csv_row_is_quarantined_and_reading_goes_on(tmp_path):
    root = tmp_path / "cat"
    path = write_csv(root, good_rows(root, 2))
    with path.open("a") as f:
        f.write("x1,only,three\n")
        f.write('x2,"unterminated,,,,\n')
    with path.open("ab") as f:
        f.write(b"x3,bad \xff byte,,,red,M\n")
    result = ingest(spec_for(path))
    assert result.rows == result.accepted + result.quarantined
    assert result.accepted == 2
    assert result.reasons == {"malformed_row": result.quarantined}
    details = pd.read_csv(result.dataset_dir / "quarantine.csv")["detail"].tolist()
    assert "has 3 fields, header has 6" in details[0]


def test_missing_modality_and_missing_label_are_accepted(tmp_path):
    root = tmp_path / "cat"
    rows = good_rows(root, 2)
    rows.append(
        {"id": "photo-only", "title": "", "description": "", "image": "images/g0.png", "colour": "red", "size": "S"}
    )
    rows.append(
        {"id": "text-only", "title": "white tee", "description": "", "image": "", "colour": "white", "size": ""}
    )
    result = ingest(spec_for(write_csv(root, rows)))
    assert result.quarantined == 0
    items = load_dataset(result.dataset_dir).items.set_index("id")
    assert items.loc["photo-only", "title"] == ""
    assert items.loc["photo-only", "image_path"].endswith("g0.png")
    assert items.loc["text-only", "image_path"] is None
    assert items.loc["text-only", "size"] is None
    assert items.loc["g0", "colour"] == ["red", "white"]


def test_reingest_is_idempotent_and_new_content_is_a_new_version(tmp_path, attrflow_home):
    root = tmp_path / "cat"
    path = write_csv(root, good_rows(root, 3))
    spec = spec_for(path)
    first = ingest(spec)
    second = ingest(spec)
    assert first.version == second.version
    assert not first.reused and second.reused
    versions = [p.name for p in (attrflow_home / "datasets" / "tiny").iterdir()]
    assert versions == [first.version]

    write_image(root / "images" / "g1.png", rgb=(0, 0, 255))  # same CSV, a changed image
    third = ingest(spec)
    assert third.version != first.version
    assert sorted(p.name for p in (attrflow_home / "datasets" / "tiny").iterdir()) == sorted(
        [first.version, third.version]
    )


def test_manifest_vocab_and_splits_are_written(tmp_path):
    root = tmp_path / "cat"
    rows = good_rows(root, 30)
    result = ingest(spec_for(write_csv(root, rows), split={"seed": 1, "validation": 0.2, "test": 0.2}))
    ds = load_dataset(result.dataset_dir)
    assert ds.manifest["counts"]["accepted"] == 30
    assert ds.manifest["source_sha256"]
    assert ds.vocab["colour"].values == ["red", "white", "blue"]  # allowed values keep their order
    assert ds.vocab["size"].values == ["M"]
    assert ds.items["split"].value_counts().to_dict() == {"train": 18, "validation": 6, "test": 6}
    assert result.splits == {"train": 18, "validation": 6, "test": 6}


def test_jsonl_and_parquet_sources(tmp_path):
    root = tmp_path / "cat"
    rows = good_rows(root, 3)
    jsonl = root / "catalog.jsonl"
    with jsonl.open("w") as f:
        for r in rows:
            f.write(json.dumps({**r, "colour": r["colour"].split("|")}) + "\n")
        f.write("{not json\n")
        f.write("[1, 2]\n")
    result = ingest(spec_for(jsonl))
    assert (result.accepted, result.reasons) == (3, {"malformed_row": 2})

    parquet = root / "catalog.parquet"
    pd.DataFrame([{**r, "id": i} for i, r in enumerate(rows)]).to_parquet(parquet)
    result = ingest(spec_for(parquet))
    assert result.accepted == 3
    assert sorted(load_dataset(result.dataset_dir).items["id"]) == ["0", "1", "2"]


def test_image_template_relative_to_catalog_folder(tmp_path):
    root = tmp_path / "cat"
    rows = good_rows(root, 2)
    for r in rows:
        write_image(root / "pics" / f"{r['id']}.jpg")
    rows.append({**rows[0], "id": "nofile"})
    result = ingest(spec_for(write_csv(root, rows), image_column=None, image_template="pics/{id}.jpg"))
    assert result.accepted == 2
    assert result.reasons == {"image_missing": 1}


def test_cli_json_last_line(tmp_path):
    root = tmp_path / "cat"
    rows = good_rows(root, 3) + [{**good_rows(root, 1)[0]}]  # one duplicate
    write_csv(root, rows)
    spec_path = root / "spec.yaml"
    spec_path.write_text(
        "name: tiny\nsource: catalog.csv\nid_column: id\ntitle_column: title\nimage_column: image\n"
        "attributes:\n  - {name: size, column: size}\n"
    )
    out = CliRunner().invoke(app, ["ingest", str(spec_path), "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output.strip().splitlines()[-1])
    assert {k: payload[k] for k in ("rows", "accepted", "quarantined", "reasons")} == {
        "rows": 4,
        "accepted": 3,
        "quarantined": 1,
        "reasons": {"duplicate_id": 1},
    }
    assert payload["version"] and payload["dataset_dir"].endswith(payload["version"])


def test_source_option_overrides_the_spec(tmp_path):
    root = tmp_path / "other"
    path = write_csv(root, good_rows(root, 2))
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "name: tiny\nsource: missing.csv\nid_column: id\ntitle_column: title\nimage_column: image\n"
        "attributes:\n  - {name: size, column: size}\n"
    )
    bad = CliRunner().invoke(app, ["ingest", str(spec_path)])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    good = CliRunner().invoke(app, ["ingest", str(spec_path), "--source", str(path), "--json"])
    assert json.loads(good.output.strip().splitlines()[-1])["accepted"] == 2


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("name: x\nsource: a.csv\nid_column: id\ntitle_column: t\nattributes: []\n", "attributes"),
        (
            "name: x\nsource: a.csv\nid_column: id\ntitle_column: t\nattributes:\n  - {name: c, column: c, kind: multi}\n",
            "attributes.0.kind",
        ),
        (
            "name: x\nsource: a.txt\nid_column: id\ntitle_column: t\nattributes:\n  - {name: c, column: c}\n",
            "cannot tell the format",
        ),
        (
            "name: x\nsource: a.csv\nid_column: id\ntitle_column: t\nimage_template: images/x.jpg\n"
            "attributes:\n  - {name: c, column: c}\n",
            "placeholder",
        ),
        ("name: x\nsource: a.csv\ntitle_column: t\nattributes:\n  - {name: c, column: c}\n", "id_column"),
        (
            "name: x\nsource: a.csv\nid_column: id\ntitle_column: t\ncolumns: 3\nattributes:\n  - {name: c, column: c}\n",
            "columns",
        ),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_spec_gives_a_clear_error(tmp_path, yaml_text, needle):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_shipped_specs_are_valid():
    from conftest import REPO

    for path in (REPO / "configs" / "catalogs").glob("*.yaml"):
        spec = load_spec(path)
        assert spec.attributes


def test_every_row_accounted_for_on_a_messy_catalog(tmp_path):
    """Many kinds of bad rows at once: the counts always add up."""
    root = tmp_path / "cat"
    rows = good_rows(root, 5)
    for kind in REASONS:
        bad, _ = _bad_row(kind, root)
        rows.append({**bad, "id": bad["id"] if kind in ("missing_id", "duplicate_id") else f"bad-{kind}"})
    path = write_csv(root, rows, header=HEADER)
    with pytest.raises(IngestRejected, match="only 5 of 12 rows accepted"):  # under the default share, 0.5
        ingest(spec_for(path))
    result = ingest(spec_for(path, min_accepted_share=0.4))
    assert result.rows == 12
    assert result.accepted == 5
    assert result.reasons == {k: 1 for k in REASONS}


def _linked_catalog(tmp_path, n: int = 4):
    """A catalog whose `images/` folder is a link to a folder elsewhere (a data disk)."""
    disk, root = tmp_path / "disk" / "photos", tmp_path / "cat"
    rows = good_rows(disk.parent / "staging", n)  # writes staging/images/g*.png
    (disk.parent / "staging" / "images").rename(disk)
    root.mkdir()
    (root / "images").symlink_to(disk, target_is_directory=True)
    return disk, root, write_csv(root, rows)


def test_a_linked_image_folder_is_refused_with_a_hint_unless_the_spec_trusts_it(tmp_path):
    disk, root, source = _linked_catalog(tmp_path)
    with pytest.raises(IngestRejected) as e:
        ingest(spec_for(source), home=tmp_path / "home")
    message = str(e.value)
    assert "only 0 of 4 rows accepted" in message and "image_outside_catalog" in message
    assert "image_roots" in message  # the hint says what to change
    report = next((tmp_path / "home" / "datasets" / "tiny").glob("rejected-*-quarantine.csv"))
    assert pd.read_csv(report)["reason"].tolist() == ["image_outside_catalog"] * 4  # nothing is lost
    assert not list((tmp_path / "home" / "datasets" / "tiny").glob("*/manifest.json"))

    result = ingest(spec_for(source, image_roots=[str(disk)]), home=tmp_path / "home")
    assert (result.accepted, result.quarantined) == (4, 0)
    paths = load_dataset(result.dataset_dir).items["image_path"]
    assert all(p.startswith(str(disk.resolve())) for p in paths)


def test_image_roots_do_not_open_lexical_escapes_elsewhere(tmp_path):
    disk, root, _ = _linked_catalog(tmp_path, n=3)
    write_image(tmp_path / "secret" / "x.png")
    rows = good_rows(root / "local", 3)  # local images, inside the catalog folder
    for r in rows:
        r["image"] = "local/" + r["image"]
    rows += [
        {**rows[0], "id": "dots", "image": "../secret/x.png"},
        {**rows[0], "id": "abs", "image": str(tmp_path / "secret" / "x.png")},
        {**rows[0], "id": "abs-trusted", "image": str(disk / "g0.png")},
    ]
    result = ingest(spec_for(write_csv(root, rows), image_roots=[str(disk)]), home=tmp_path / "home")
    q = pd.read_csv(result.dataset_dir / "quarantine.csv")
    assert dict(zip(q["id"], q["reason"], strict=True)) == {
        "dots": "image_outside_catalog",
        "abs": "image_outside_catalog",
    }
    assert "abs-trusted" in set(load_dataset(result.dataset_dir).items["id"])


def test_image_roots_in_a_spec_file_are_relative_to_it(tmp_path):
    disk, root, source = _linked_catalog(tmp_path)
    spec_file = root / "catalog.yaml"
    spec = spec_for(source).model_dump(mode="json")
    spec.update(source="catalog.csv", image_roots=["../disk/photos"])
    spec_file.write_text(json.dumps(spec))
    assert load_spec(spec_file).image_roots == [(root / "../disk/photos").absolute()]
    assert ingest(load_spec(spec_file), home=tmp_path / "home").accepted == 4


def test_cli_ingest_that_accepts_too_little_exits_non_zero(tmp_path, monkeypatch):
    _, root, source = _linked_catalog(tmp_path)
    spec_file = root / "catalog.yaml"
    spec_file.write_text(json.dumps({**spec_for(source).model_dump(mode="json"), "source": "catalog.csv"}))
    monkeypatch.setenv("ATTRFLOW_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(app, ["ingest", str(spec_file)])
    assert out.exit_code == 2
    assert "0 of 4 rows accepted" in out.output and "image_roots" in out.output
