from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from components.catalog import ingest, load_dataset, load_spec
from components.catalog.demo import COLOURS, MATERIALS, write_demo_catalog
from components.catalog.spec import AttributeSpec, SplitSpec
from components.catalog.splits import assign_splits

SIZE = AttributeSpec(name="size", column="size", kind="multiclass")
COLOUR = AttributeSpec(name="colour", column="colour", kind="multilabel", separator="|")


def _multiclass_labels(n=3000, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.choice(["S", "M", "L", "XL"], size=n, p=[0.6, 0.25, 0.1, 0.05]).astype(object)
    sizes[:3] = ["XXS", "XXL", "XXXL"]  # singletons: too rare to stratify
    sizes[3:10] = None  # missing labels
    return pd.DataFrame({"size": sizes})


def test_splits_are_deterministic_by_seed():
    labels = _multiclass_labels()
    split = SplitSpec(seed=3, validation=0.1, test=0.2)
    a = assign_splits(labels, [SIZE], split)
    b = assign_splits(labels, [SIZE], split)
    c = assign_splits(labels, [SIZE], SplitSpec(seed=4, validation=0.1, test=0.2))
    assert (a == b).all()
    assert (a != c).any()
    assert {s: int((a == s).sum()) for s in ("train", "validation", "test")} == {
        "train": 2100,
        "validation": 300,
        "test": 600,
    }


def test_multiclass_split_is_stratified_and_survives_rare_classes():
    labels = _multiclass_labels()
    split = assign_splits(labels, [SIZE], SplitSpec(seed=0, validation=0.1, test=0.2))
    overall = labels["size"].value_counts(normalize=True)
    for name in ("train", "validation", "test"):
        share = labels["size"][split == name].value_counts(normalize=True)
        for value in ("S", "M", "L", "XL"):
            assert abs(share[value] - overall[value]) < 0.01, (name, value)


def test_test_split_does_not_move_when_validation_share_changes():
    labels = _multiclass_labels()
    a = assign_splits(labels, [SIZE], SplitSpec(seed=0, validation=0.1, test=0.2))
    b = assign_splits(labels, [SIZE], SplitSpec(seed=0, validation=0.3, test=0.2))
    assert ((a == "test") == (b == "test")).all()


def test_multilabel_split_uses_iterative_stratification():
    rng = np.random.default_rng(0)
    palette = ["black", "white", "red", "blue", "green", "teal"]
    probs = [0.5, 0.4, 0.2, 0.1, 0.05, 0.02]
    colours = [[c for c, p in zip(palette, probs, strict=True) if rng.random() < p] or None for _ in range(4000)]
    labels = pd.DataFrame({"colour": colours, "size": _multiclass_labels(4000)["size"]})
    split = assign_splits(labels, [COLOUR, SIZE], SplitSpec(seed=0, validation=0.1, test=0.2))
    has = {c: np.array([bool(v) and c in v for v in colours]) for c in palette}
    for name, share in (("train", 0.7), ("validation", 0.1), ("test", 0.2)):
        for c in palette:
            got = (has[c] & (split == name)).sum() / has[c].sum()
            # Iterative stratification puts each value's share close to the split's share.
            assert abs(got - share) < 0.02, (name, c, got)


def test_tiny_and_single_class_inputs_do_not_crash():
    one_class = pd.DataFrame({"size": ["M"] * 7})
    split = assign_splits(one_class, [SIZE], SplitSpec(seed=0, validation=0.2, test=0.2))
    assert len(split) == 7 and (split == "test").sum() == 1
    all_missing = pd.DataFrame({"colour": [None] * 10})
    assert len(assign_splits(all_missing, [COLOUR], SplitSpec())) == 10
    assert len(assign_splits(pd.DataFrame({"size": []}), [SIZE], SplitSpec())) == 0


def _tree_digest(folder) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_demo_catalog_is_reproducible_by_seed(tmp_path):
    write_demo_catalog(tmp_path / "a", n=60, seed=5)
    write_demo_catalog(tmp_path / "b", n=60, seed=5)
    write_demo_catalog(tmp_path / "c", n=60, seed=6)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")


def test_demo_catalog_text_hides_colour_more_often_than_material(tmp_path):
    spec_path = write_demo_catalog(tmp_path / "demo", n=600, seed=0)
    df = pd.read_csv(tmp_path / "demo" / "catalog.csv", keep_default_na=False).iloc[:600]
    text = (df["title"] + " " + df["description"]).str.lower()
    colour_named = np.mean([all(c in t for c in cs.split("|")) for t, cs in zip(text, df["colour"], strict=True)])
    material_named = np.mean([bool(m) and m in t for t, m in zip(text, df["material"], strict=True)])
    assert 0.3 < colour_named < 0.6
    assert material_named > 0.75
    assert (df["colour"].str.contains("|", regex=False)).mean() > 0.5  # many two-colour products
    assert set("|".join(df["colour"]).split("|")) <= set(COLOURS)
    assert set(df["material"]) - {""} <= set(MATERIALS)

    result = ingest(load_spec(spec_path))
    assert result.accepted == 600
    assert result.quarantined == 8  # the deliberate defects, one per reason
    assert len(result.reasons) == 8
    ds = load_dataset(result.dataset_dir)
    assert ds.items["image_path"].isna().sum() > 0  # products without a photo exist
    assert (ds.items["title"] == "").sum() > 0  # and products with only a photo


def test_shipped_demo_spec_matches_the_generator(tmp_path):
    spec_path = write_demo_catalog(tmp_path / "demo", n=5, seed=0)
    assert spec_path.read_text() == (REPO / "configs" / "catalogs" / "demo.yaml").read_text()


@pytest.mark.slow
def test_fashion_catalog_ingests(fashion_dir):
    spec = load_spec(REPO / "configs" / "catalogs" / "fashion.yaml")
    result = ingest(spec, source=fashion_dir / "styles.csv")
    assert result.rows == 39992
    assert result.accepted + result.quarantined == result.rows
    assert result.accepted == 39992  # PROVENANCE.md: every row has its image and an id
    ds = load_dataset(result.dataset_dir)
    assert len(ds.vocab["articleType"].values) == 142
    assert len(ds.vocab["baseColour"].values) == 46
    # Missing labels are written "NA" or left empty in this file (counted with pandas).
    assert ds.manifest["attributes"]["baseColour"]["labelled"] == 39992 - 12
    assert ds.manifest["attributes"]["season"]["labelled"] == 39992 - 19
    assert ds.manifest["attributes"]["usage"]["labelled"] == 39992 - 288
    assert (ds.items["title"] == "").sum() == 6  # products without a title: accepted, image only
    shares = ds.items.groupby("split")["gender"].value_counts(normalize=True).unstack()
    assert (shares.max() - shares.min()).max() < 0.01


def test_demo_without_configs_fails_with_what_to_do(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from attrflow import cli

    checkout_configs = cli.CHECKOUT_CONFIGS
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "CHECKOUT_CONFIGS", tmp_path / "not-a-checkout" / "configs")
    out = CliRunner().invoke(cli.app, ["demo"])
    assert out.exit_code == 2
    assert "--configs" in out.output and "checkout" in out.output
    out = CliRunner().invoke(cli.app, ["demo", "--configs", str(checkout_configs), "--fusions", "nope"])
    assert out.exit_code == 2 and "nope.yaml" in out.output


def test_a_product_keeps_its_split_in_the_next_dataset_version(tmp_path):
    """A catalog that grows: the earlier products keep their splits (no product a model trained on
    moves into a later test split), the new ones are assigned among themselves, stratified."""
    spec_path = write_demo_catalog(tmp_path / "catalog", n=300, seed=5, defects=False)
    spec = load_spec(spec_path)
    home = tmp_path / "home"
    first = load_dataset(ingest(spec, home=home).dataset_dir)
    assert first.manifest["splits_kept_from"] is None
    frame = pd.read_csv(spec.source)
    extra = frame.sample(n=120, random_state=1).assign(id=lambda f: "new-" + f["id"].astype(str))
    pd.concat([frame, extra]).to_csv(spec.source, index=False)
    second = load_dataset(ingest(spec, home=home).dataset_dir)
    assert second.version != first.version and second.manifest["splits_kept_from"] == first.version
    before = first.items.set_index("id")["split"]
    after = second.items.set_index("id")["split"]
    assert (after.loc[before.index] == before).all()
    new = after[after.index.str.startswith("new-")]
    assert len(new) == 120 and set(new) == {"train", "validation", "test"}
    assert (new == "test").sum() == pytest.approx(spec.split.test * 120, abs=4)  # iterative stratification: about
    # another split setting is a fresh assignment, not the earlier one
    changed = spec.model_copy(update={"split": SplitSpec(seed=3, validation=0.2, test=0.2)})
    third = load_dataset(ingest(changed, home=home).dataset_dir)
    assert third.manifest["splits_kept_from"] is None
    assert (third.items["split"] == "test").mean() == pytest.approx(0.2, abs=0.01)
