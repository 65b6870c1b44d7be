"""Value extraction: distant labels, the benchmark reader, the counting rule, BIO decoding, the
tagger (KL consistency, range minimisation, save/load) and one real-encoder run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from components.catalog.spans import (
    Span,
    SpanRow,
    locate_values,
    snap_to_words,
    spans_from_attributes,
    surface_forms,
    trim_separators,
    value_of,
    word_aligned_attributes,
)
from components.catalog.value_benchmarks import read_value_benchmark
from components.evaluation.extraction_metrics import outcome, span_scores, value_r_at_p, value_scores
from components.inference.extraction import best_values, extract, extract_values
from components.models.bio import B, I, O, decode_spans, spans_from_tags, viterbi, viterbi_one_span
from components.models.dictionary import ValueDictionary
from components.models.io import load_model, model_task, save_extraction_ensemble, save_model
from components.models.model import create_model
from components.models.tagger import IGNORE, ExtractionConfig, ExtractionEnsemble, consistency_kl
from components.training.extraction import ExtractionTrainConfig, ExtractionTrainingConfig, train_extractor

TINY_TEXT = {"name": "tiny-random", "max_length": 32}


# -- distant labels -----------------------------------------------------------------------------
def test_longest_match_first_and_case_insensitive():
    text = "Nordvik navy blue Blue shirt"
    spans, problems = locate_values(text, {"colour": ["Blue", "Navy Blue"]})
    assert [s.text(text) for s in spans] == ["navy blue", "Blue"]  # the longer first, then the free "Blue"
    assert problems == {}


def test_token_boundaries_and_absent_value():
    text = "Redwood lure 150mm 9g"
    spans, problems = locate_values(text, {"colour": ["Red"], "length": ["mm"], "weight": ["9g"], "brand": ["Acme"]})
    assert [(s.attribute, s.text(text)) for s in spans] == [("weight", "9g")]
    assert "inside a token" in problems["colour"] and "inside a token" in problems["length"]
    assert "not in the text" in problems["brand"]
    assert "n/a" not in problems and locate_values(text, {"material": []}) == ([], {})


def test_overlapping_attributes_exclusive_or_layered():
    text = "FISH KING spinner"
    values = {"brand": ["FISH KING"], "name": ["FISH KING spinner"]}
    spans, problems = locate_values(text, values)  # exclusive: the longer wins, the brand is reported
    assert [(s.attribute, s.start, s.end) for s in spans] == [("name", 0, 17)]
    assert "overlaps" in problems["brand"]
    spans, problems = locate_values(text, values, exclusive=False)  # one layer per attribute
    assert sorted((s.attribute, s.start, s.end) for s in spans) == [("brand", 0, 9), ("name", 0, 17)]
    assert problems == {}


def test_fashion_distant_labels_from_attribute_columns():
    title = "Nike Men Navy Blue Sports Shoes"
    labels = {
        "baseColour": "Navy Blue",
        "gender": "Men",
        "articleType": "Sports Shoes",
        "usage": "Sports",
        "season": "Fall",
    }
    row, problems = spans_from_attributes("1", title, "Footwear", labels)
    assert {s.attribute: s.text(title) for s in row.spans} == {
        "baseColour": "Navy Blue",
        "gender": "Men",
        "articleType": "Sports Shoes",
    }
    assert "overlaps" in problems["usage"] and "not in the text" in problems["season"]
    assert row.values["season"] == ["Fall"]  # kept: a product without a span still counts


def test_custom_boundaries_allow_subword_values():
    text = "Lure 150mm"
    edges = lambda t: {0, 4, 5, 8, 10}  # noqa: E731  e.g. a tokenizer's "150" "##mm"
    spans, problems = locate_values(text, {"length": ["150"]}, edges)
    assert [s.text(text) for s in spans] == ["150"] and problems == {}


def test_widen_labels_the_whole_token_and_learns_its_value():
    text = "FBI Letters Cap YE-409"
    values = {"Pattern": ["Letter"], "Color": ["9"]}
    assert set(locate_values(text, values)[1]) == {"Pattern", "Color"}  # inside tokens: no span
    spans, problems = locate_values(text, values, widen=True)
    assert [(s.attribute, s.text(text)) for s in spans] == [("Pattern", "Letters")]
    assert list(problems) == ["Color"]  # "9" is too small a share of "409" to widen to it
    row = SpanRow("1", text, "Caps", values, spans)
    assert surface_forms([row]) == {"Pattern": {"letters": "Letter"}}


def test_learned_casing_reports_the_annotators_form_where_the_title_writes_it():
    # Annotators copy a value from one of its occurrences; the tagger may find another casing.
    rows = [
        SpanRow("1", "Women Swimsuit", "Swim", {"gender": ["Women"]}, [Span(0, 5, "gender")]),
        SpanRow(
            "2", "women shirt Women's", "Tops", {"gender": ["Women"]}, [Span(0, 5, "gender"), Span(12, 17, "gender")]
        ),
        SpanRow("3", "steel gas stove", "Stoves", {"fuel": ["gas"]}, [Span(6, 9, "fuel")]),
    ]
    forms = surface_forms(rows)
    assert forms == {"gender": {"women": "Women"}}  # "gas" is labelled as written: nothing to learn
    title = "bikinis women swimwear Women's Swimsuits"
    assert value_of(title, 8, 13, forms["gender"]) == "Women"  # the title writes "Women" too
    assert value_of("bikinis women swimwear", 8, 13, forms["gender"]) == "women"  # only as found
    assert value_of("Portable gas stove", 9, 12, {}) == "gas"


def test_learned_word_alignment_snaps_and_trims_spans():
    rows = [
        SpanRow("1", "Clarks Wave.Cruise Mary Jane", "Shoes", {"model": ["Wave.Cruise"]}, [Span(7, 18, "model")]),
        SpanRow("2", "Kenneth Sim-Plicity Oxford", "Shoes", {"model": ["Plicity"]}, [Span(12, 19, "model")]),
        SpanRow("3", "Lure 6.5cm", "Lure", {"length": ["6.5"]}, [Span(5, 8, "length")]),
    ]
    assert word_aligned_attributes(rows[:1]) == {"model": "chunk"}
    assert word_aligned_attributes(rows) == {"model": "word"}  # "Plicity" is a word, not a chunk
    text = "Clarks Wave.Cruise Mary Jane"
    assert snap_to_words(text, 7, 11, "chunk") == (7, 18)  # "Wave" -> "Wave.Cruise"
    assert snap_to_words("Sim-Plicity Oxford", 0, 9) == (0, 11)  # "Sim-Plici" -> "Sim-Plicity"
    assert trim_separators("Shoe-49-Black", 4, 8) == (5, 7)  # "-49-" -> "49"


def test_benchmark_reader_accepts_and_quarantines(tmp_path):
    rows = [
        {"input": "Acme Lure 150mm", "category": "Lure", "target_scores": {"Brand": {"Acme": 1}, "Color": {"n/a": 1}}},
        "not json",
        {"input": "Acme Lure", "category": "Lure", "target_scores": {"Brand": {"Zeta": 1}}},
        {"category": "Lure", "target_scores": {}},
    ]
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    out = read_value_benchmark(path)
    assert [r.id for r in out.accepted] == ["1"]
    assert out.accepted[0].values == {"Brand": ["Acme"], "Color": []}
    assert out.accepted[0].spans == [Span(0, 4, "Brand")]
    reasons = {q.line: q.reason for q in out.quarantined}
    assert "invalid JSON" in reasons[2] and "not in the text" in reasons[3] and "no input" in reasons[4]
    assert [r.id for r in out.all_products()] == ["1", "3"]  # the unlabellable product is still scored
    assert out.attribute_sets() == {"Lure": ["Brand", "Color"]}


def _value_catalog(root: Path, n: int = 120) -> Path:
    """A JSONL catalog in the benchmarks' layout (no id column, category-dependent attributes) and
    its spec, plus three rows that must be quarantined."""
    brands, colours = ["Acme", "Zeta", "Orbit", "Nova"], ["red", "blue", "green"]
    root.mkdir(parents=True)
    lines = []
    for i in range(n):
        brand, colour = brands[i % 4], colours[i % 3]
        if i % 2:
            title = f"{brand} Lure {colour} {40 + i}mm"
            lines.append(
                {
                    "input": title,
                    "category": "Lure",
                    "target_scores": {"Brand": {brand: 1}, "Length": {f"{40 + i}mm": 1}},
                }
            )
        else:
            title = f"{colour} cotton Shirt by {brand}" if i % 4 else f"plain Shirt by {brand}"
            lines.append(
                {
                    "input": title,
                    "category": "Shirt",
                    "target_scores": {"Brand": {brand: 1}, "Color": {colour if i % 4 else "n/a": 1}},
                }
            )
    bad = [
        {"input": "Acme Lure", "category": "Lure", "target_scores": {"Brand": {"Kappa": 1}}},  # not in the text
        {"input": "Acme Lure", "category": "Lure", "target_scores": ["Acme"]},  # not attribute -> values
    ]
    text = "\n".join(json.dumps(x) for x in lines + bad) + "\n{broken\n"
    (root / "catalog.jsonl").write_text(text)
    (root / "spec.yaml").write_text(
        "name: lures\nsource: catalog.jsonl\nid_column: null\ntitle_column: input\nvalues_column: target_scores\n"
        "attributes:\n  - {name: category, column: category}\nsplit: {seed: 0, validation: 0.2, test: 0.2}\n"
    )
    return root / "spec.yaml"


def test_value_catalog_ingests_through_a_spec_and_trains_with_the_cli(tmp_path):
    """The benchmarks' JSONL layout through a catalog spec (`values_column`): every row accepted or
    quarantined with its reason, values and spans stored, then `attrflow train` / `evaluate` on it."""
    import yaml
    from typer.testing import CliRunner

    from attrflow.cli import app
    from components.catalog import ingest, load_dataset, load_spec
    from components.catalog.spans import dataset_rows

    result = ingest(load_spec(_value_catalog(tmp_path / "catalog")))
    assert result.rows == 123 and result.accepted == 120
    assert result.reasons == {"malformed_row": 1, "malformed_values": 1, "value_not_in_text": 1}
    quarantine = (result.dataset_dir / "quarantine.csv").read_text()
    assert "121,121,value_not_in_text,Brand: value 'Kappa' is not in the text" in quarantine
    dataset = load_dataset(result.dataset_dir)
    assert dataset.manifest["values"]["Color"] == {"named": 60, "with_value": 30}
    first = dataset.items.set_index("id").loc["2"]  # row 2: "Zeta Lure blue 41mm"
    assert json.loads(first["values"]) == {"Brand": ["Zeta"], "Length": ["41mm"]}
    assert json.loads(first["spans"]) == [
        {"attribute": "Brand", "start": 0, "end": 4},
        {"attribute": "Length", "start": 15, "end": 19},
    ]
    rows = {r.id: r for r in dataset_rows(dataset.items)}
    assert rows["2"].category == "Lure" and rows["1"].values["Color"] == []  # "n/a": named, no value

    shipped = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "models" / "extraction_text.yaml").read_text()
    )
    shipped["model"].update(text=TINY_TEXT)
    shipped["training"].update(epochs=8, batch_size=16, lr_head=1e-2, lr_text=1e-3, seeds=None)
    config = tmp_path / "extraction.yaml"
    config.write_text(yaml.safe_dump(shipped))
    runner = CliRunner()
    out = tmp_path / "model"
    trained = runner.invoke(
        app, ["train", str(config), "--dataset", str(result.dataset_dir), "--out", str(out), "--json"]
    )
    assert trained.exit_code == 0, trained.output
    assert set(json.loads((out / "thresholds.json").read_text())) == {"Brand", "Color", "Length"}
    evaluated = runner.invoke(app, ["evaluate", str(out), "--dataset", str(result.dataset_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output.strip().splitlines()[-1])
    assert set(report["per_attribute"]) == {"Brand", "Color", "Length"} and report["micro"]["f1"] > 0.6

    # training.seeds: one model per seed, each trained as alone, saved and served as their ensemble
    shipped["training"]["seeds"] = [0, 1]
    config.write_text(yaml.safe_dump(shipped))
    ens_dir = tmp_path / "ensemble"
    trained = runner.invoke(
        app, ["train", str(config), "--dataset", str(result.dataset_dir), "--out", str(ens_dir), "--json"]
    )
    assert trained.exit_code == 0, trained.output
    ensemble = load_model(ens_dir)
    assert isinstance(ensemble, ExtractionEnsemble) and len(ensemble.members) == 2
    alone = load_model(out).state_dict()
    assert all(torch.allclose(v, alone[k]) for k, v in load_model(ens_dir / "members" / "seed0").state_dict().items())
    assert set(json.loads((ens_dir / "thresholds.json").read_text())) == {"Brand", "Color", "Length"}
    evaluated = runner.invoke(app, ["evaluate", str(ens_dir), "--dataset", str(result.dataset_dir), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output.strip().splitlines()[-1])["micro"]["f1"] > 0.6
    found = extract_values(ens_dir, ["Zeta Lure blue 41mm"], category="Lure")[0]
    assert {v["attribute"]: v["value"] for v in found}.get("Length") == "41mm"


# -- metrics -------------------------------------------------------------------------------------
def test_counting_rule_by_hand():
    expected = [
        {"Brand": ["Acme"], "Color": [], "Size": ["10 D"]},
        {"Brand": ["Zeta", "ZETA"], "Color": ["red"], "Size": []},
    ]
    predicted = [
        {"Brand": "Acme ", "Color": None, "Size": "10"},  # VC (spaces stripped), NN, VW
        {"Brand": "ZETA", "Size": "XL", "Weight": "5g"},  # VC (second accepted value), VN, NV; Weight not named
    ]
    assert [outcome(["Acme"], "acme"), outcome([], ""), outcome(["x"], None)] == ["VW", "NN", "VN"]
    res = value_scores(expected, predicted)
    m = res["micro"]
    assert (m["NN"], m["NV"], m["VN"], m["VC"], m["VW"]) == (1, 1, 1, 2, 1)
    assert m["precision"] == pytest.approx(2 / 4) and m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(0.5)
    assert res["per_attribute"]["Brand"]["f1"] == 1.0 and res["per_attribute"]["Size"]["precision"] == 0.0
    assert "Weight" not in res["per_attribute"]


def test_span_f1_and_value_r_at_p95_by_hand():
    gold = [[("brand", 0, 4), ("colour", 5, 8)], [("brand", 0, 3)]]
    pred = [[("brand", 0, 4), ("colour", 5, 9)], [("brand", 0, 3), ("size", 4, 6)]]
    s = span_scores(gold, pred)
    assert s["micro"]["precision"] == pytest.approx(2 / 4) and s["micro"]["recall"] == pytest.approx(2 / 3)
    assert s["per_attribute"]["colour"]["f1"] == 0.0 and s["per_attribute"]["brand"]["f1"] == 1.0
    expected = [{"a": ["x"], "b": ["y"]}, {"a": ["z"], "b": []}]
    predicted = [{"a": "x", "b": "w"}, {"a": "z", "b": None}]
    conf = [{"a": 0.9, "b": 0.5}, {"a": 0.8}]
    # ranked: 0.9 right, 0.8 right, 0.5 wrong: 2 of 3 expected values at precision 1
    assert value_r_at_p(expected, predicted, conf) == pytest.approx(2 / 3)


# -- BIO -----------------------------------------------------------------------------------------
def test_spans_from_tags_reads_invalid_i_after_o_as_a_start():
    assert spans_from_tags([O, I, I, O, B, I, B]) == [(1, 2), (4, 5), (6, 6)]
    assert spans_from_tags([I]) == [(0, 0)] and spans_from_tags([O, O]) == []


def _probs(rows):
    return np.asarray(rows, dtype=float)


def test_viterbi_never_puts_i_after_o_and_layers_overlap():
    # token 1's I is the argmax but O precedes it: the best valid path is B at token 1
    layer_a = [[0.9, 0.05, 0.05], [0.1, 0.35, 0.55], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]]
    layer_b = [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]
    probs = np.stack([_probs(layer_a), _probs(layer_b)], axis=1)  # (T, A, 3)
    tags = viterbi(np.log(probs))
    assert tags[:, 0].tolist() == [O, B, I, O] and tags[:, 1].tolist() == [B, I, O, O]
    spans = decode_spans(probs, ["brand", "name"])
    assert [(a, i, j) for a, i, j, _ in spans] == [("brand", 1, 2), ("name", 0, 1)]  # overlapping layers
    assert spans[0][3] == pytest.approx(np.mean([0.9, 0.9]))  # mean 1 - p(O)
    assert [a for a, *_ in decode_spans(probs, ["brand", "name"], [False, True])] == ["name"]


def test_crf_transitions_steer_the_decoding():
    """With no evidence in the tokens (uniform), a CRF's learned transitions decide the path."""
    uniform = np.log(np.full((3, 1, 3), 1 / 3))
    assert viterbi(uniform)[:, 0].tolist() == [O, O, O]
    start, trans, end = np.zeros(3), np.zeros((3, 3)), np.zeros(3)
    start[B], trans[B, I], trans[I, I] = 2.0, 2.0, 2.0
    assert viterbi(uniform, (start, trans, end))[:, 0].tolist() == [B, I, I]
    trans[O, I] = 50.0  # a learned O -> I is still never decoded
    start[B], start[O] = 0.0, 5.0
    path = viterbi(uniform, (start, trans, end))[:, 0].tolist()
    assert path[0] == O and not any(a == O and b == I for a, b in zip(path, path[1:], strict=False))


def test_crf_loss_is_a_likelihood_over_named_attributes():
    model = _tiny(crf=True)
    rows = [SpanRow("1", "Acme red shirt", "Shirts", {"brand": ["Acme"]}, [Span(0, 4, "brand")])]
    batch = model.tokenize([r.text for r in rows], [r.category for r in rows])
    labels = model.labels(rows, batch)
    loss, parts = model.loss(model(batch), labels)
    loss.backward()
    assert loss.item() > 0 and model.crf.transitions.grad.abs().sum() > 0
    none_named = model.labels([SpanRow("2", "blue bag", "Bags", {}, [])], model.tokenize(["blue bag"], ["Bags"]))
    assert model.crf_loss(model(model.tokenize(["blue bag"], ["Bags"])).tag_logits, none_named["tags"]).item() == 0.0


def test_required_attribute_gets_its_best_single_span():
    layer = [[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.4, 0.05, 0.55], [0.95, 0.04, 0.01]]  # all O when free
    probs = _probs(layer)[:, None, :]
    assert viterbi_one_span(np.log(probs))[:, 0].tolist() == [O, B, I, O]
    assert decode_spans(probs, ["brand"]) == []
    assert [(a, i, j) for a, i, j, _ in decode_spans(probs, ["brand"], required=[True])] == [("brand", 1, 2)]


# -- the tagger ----------------------------------------------------------------------------------
def _tiny(**cfg):
    torch.manual_seed(0)
    return create_model(
        {"task": "extraction", "text": TINY_TEXT, **cfg},
        {"attributes": {"kind": "span", "values": ["brand", "colour"]}},
    )


def test_ensemble_decodes_the_members_mean_probabilities_and_round_trips(tmp_path):
    """ExtractionEnsemble (`training.seeds`; the bench's `x3 seeds` and `all N trained` rows): its
    tag and attribute distributions are the members' means, one model twice extracts exactly what
    the model does, and its folder loads back as the same ensemble."""
    first, second = _tiny(attribute_head=True), _tiny(attribute_head=True)
    torch.nn.init.normal_(second.tagger.weight, std=1.0)  # a different member
    torch.nn.init.normal_(second.attribute_head.weight, std=1.0)
    texts, cats = ["Acme red shirt", "blue Zorbo bag"], ["Shirts", "Bags"]
    batch = first.tokenize(texts, cats)
    a, b, ens = first(batch), second(batch), ExtractionEnsemble([first, second])
    out = ens(batch)
    assert torch.allclose(out.tag_logits.exp(), (a.tag_logits.softmax(-1) + b.tag_logits.softmax(-1)) / 2, atol=1e-6)
    head_mean = (a.attribute_logits.sigmoid() + b.attribute_logits.sigmoid()) / 2
    assert torch.allclose(out.attribute_logits.sigmoid(), head_mean, atol=1e-5)
    plain = _tiny()
    torch.nn.init.normal_(plain.tagger.weight, std=1.0)
    assert extract(ExtractionEnsemble([plain, plain]), texts, cats) == extract(plain, texts, cats)
    loaded = load_model(save_extraction_ensemble(ens, tmp_path / "e", ["seed0", "seed1"]))
    assert isinstance(loaded, ExtractionEnsemble) and model_task(tmp_path / "e") == "extraction"
    assert torch.allclose(loaded(batch).tag_logits, out.tag_logits, atol=1e-6)
    with pytest.raises(ValueError, match="same attributes"):
        ExtractionEnsemble(
            [
                first,
                create_model(
                    {"task": "extraction", "text": TINY_TEXT}, {"attributes": {"kind": "span", "values": ["size"]}}
                ),
            ]
        )


def test_labels_tag_spans_and_ignore_unnamed_attributes():
    model = _tiny()
    row = SpanRow("1", "Acme red shirt", "Shirts", {"brand": ["Acme"]}, [Span(0, 4, "brand")])
    batch = model.tokenize([row.text], [row.category])
    lab = model.labels([row], batch)
    title = batch["title_mask"][0]
    brand = lab["tags"][0, title, 0].tolist()
    n = len(model.text_encoder.tokenizer.tokenize("Acme"))  # its word pieces: B, then I
    assert brand == [B] + [I] * (n - 1) + [O] * (len(brand) - n)
    assert set(lab["tags"][0, :, 1].tolist()) == {IGNORE}  # colour not named: no loss for it
    assert set(lab["tags"][0, ~title, 0].tolist()) == {IGNORE}  # [CLS], [SEP] and the category
    assert lab["present"][0].tolist() == [1.0, float(IGNORE)]


def test_kl_consistency_is_zero_when_tasks_agree():
    p = torch.tensor([[0.1, 0.9, 0.5]])
    assert torch.allclose(consistency_kl(p, p), torch.zeros_like(p), atol=1e-6)
    assert (consistency_kl(p, 1 - p)[0, :2] > 0.5).all()
    with pytest.raises(ValueError, match="attribute_head"):
        ExtractionConfig(lambda_kl=0.1)


def test_range_minimisation_removes_tags_of_rejected_attributes():
    model = _tiny(attribute_head=True)
    with torch.no_grad():  # every token B for every attribute; the head rejects colour, accepts brand
        model.tagger.weight.zero_()
        model.tagger.bias.copy_(torch.tensor([0.0, 5.0, 0.0] * 2))
        model.attribute_head.weight.zero_()
        model.attribute_head.bias.copy_(torch.tensor([5.0, -5.0]))
    texts, cats = ["Acme red shirt"], ["Shirts"]
    assert {s.attribute for s in extract(model, texts, cats)[0]} == {"brand", "colour"}
    model.config = model.config.model_copy(update={"range_minimisation": True})
    found = extract(model, texts, cats)[0]
    assert found and {s.attribute for s in found} == {"brand"}
    assert {s.attribute for s in extract(model, texts, cats, {"Shirts": ["colour"]})[0]} == set()
    with torch.no_grad():  # the tagger now finds nothing; fill_accepted gives the accepted brand one span
        model.tagger.bias.copy_(torch.tensor([5.0, 0.0, 0.0] * 2))
    assert extract(model, texts, cats)[0] == []
    model.config = model.config.model_copy(update={"fill_accepted": True})
    found = extract(model, texts, cats)[0]
    assert len(found) == 1 and found[0].attribute == "brand"


def test_save_load_round_trip(tmp_path):
    model = _tiny(attribute_head=True, lambda_kl=0.5, crf=True)
    with torch.no_grad():
        model.crf.transitions.normal_()
    batch = model.tokenize(["Acme red shirt", "blue bag"], ["Shirts", "Bags"])
    before = model(batch)
    model.surface_forms = {"colour": {"reds": "red"}}
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.surface_forms == model.surface_forms
    assert all(np.array_equal(a, b) for a, b in zip(loaded.transitions(), model.transitions(), strict=True))
    after = loaded(batch)
    assert loaded.attributes == ["brand", "colour"] and loaded.config == model.config
    assert torch.allclose(before.tag_logits, after.tag_logits) and torch.allclose(
        before.attribute_logits, after.attribute_logits
    )


def test_dictionary_baseline_longest_known_value_per_category():
    rows = [
        SpanRow("1", "Acme navy blue shirt", "Shirts", {"colour": ["navy blue"], "brand": ["Acme"]}),
        SpanRow("2", "Zeta blue shirt", "Shirts", {"colour": ["blue"], "brand": ["Zeta"]}),
        SpanRow("3", "Omega red bag", "Bags", {"colour": ["red"]}),
    ]
    d = ValueDictionary.fit(rows)
    text = "Zeta Navy Blue red shirt"
    found = d.predict(text, "Shirts", ["colour", "brand", "size"])
    assert {a: text[s:e] for a, (s, e) in found.items()} == {"colour": "Navy Blue", "brand": "Zeta"}
    assert d.predict(text, "Bags", ["colour"]) == {"colour": (15, 18)}


@pytest.mark.parametrize("crf", [False, True])
def test_real_default_encoder_learns_to_extract_a_brand(crf):
    torch.set_num_threads(2)
    brands = ["Acme", "Zorbo", "Kelvix", "Truvo", "Nimbra", "Pelto", "Quarn", "Vexa"]
    items = ["running shoe", "leather boot", "canvas sneaker", "trail shoe"]
    rows = []
    for i, b in enumerate(brands):
        for j, it in enumerate(items[:2] if i % 2 else items[2:]):
            text = f"{b} Men's {it} size {8 + j}"
            rows.append(SpanRow(str(len(rows)), text, "Shoes", {"Brand": [b]}, [Span(0, len(b), "Brand")]))
    cfg = ExtractionTrainConfig(
        model=ExtractionConfig(text={"max_length": 32}, crf=crf),
        training=ExtractionTrainingConfig(
            epochs=8, batch_size=8, lr_text=1e-4, lr_head=3e-3, warmup_share=0.0, freeze_layers=3
        ),
    )
    model = train_extractor(cfg, rows)
    found = best_values(extract(model, ["Stelvo Men's trail shoe size 9"], ["Shoes"])[0])
    assert "Brand" in found and found["Brand"].text == "Stelvo" and found["Brand"].start == 0


# -- M-JAVE's visual gates ------------------------------------------------------------------------
TINY_IMAGE = {"name": "tiny-random", "image_size": [32, 32]}


def _gated(**cfg):
    return _tiny(image=TINY_IMAGE, global_visual_gate=True, regional_visual_gate=True, **cfg)


def test_visual_gates_shapes_and_products_without_an_image():
    """Each gate keeps the token vectors' shape; a product without an image passes them unchanged
    (its tags are those of the same model with no gates), one with an image does not."""
    from components.models.tagger import VisualGates

    gates = VisualGates(8, image_dim=6, region_dim=5, global_gate=True, regional_gate=True)
    h, image, regions = torch.randn(2, 7, 8), torch.randn(2, 6), torch.randn(2, 4, 5)
    out = gates(h, image, regions, torch.tensor([True, False]))
    assert out.shape == h.shape
    assert torch.equal(out[1], h[1]) and not torch.allclose(out[0], h[0])
    for only in ({"global_gate": True, "regional_gate": False}, {"global_gate": False, "regional_gate": True}):
        one = VisualGates(8, 6, 5, **only)
        assert one(h, image, regions, torch.tensor([True, True])).shape == h.shape

    model = _gated()
    batch = model.tokenize(["Acme red shirt", "blue bag"], ["Shirts", "Bags"])
    without = model(batch).tag_logits  # no pixels, no cache: no product has an image
    ungated = model.gates
    model.gates = None
    assert torch.allclose(model(batch).tag_logits, without)
    model.gates = ungated
    pixels = torch.rand(2, 3, 32, 32)
    withimg = model({**batch, "pixels": pixels, "has_image": torch.tensor([True, False])}).tag_logits
    assert withimg.shape == without.shape
    assert torch.allclose(withimg[1], without[1]) and not torch.allclose(withimg[0], without[0])
    with pytest.raises(ValueError, match="image encoder"):
        ExtractionConfig(global_visual_gate=True)
    frozen = _gated(frozen_text=True).train()  # training never touches the frozen encoders' dropout or norms
    assert frozen.training and frozen.gates.training
    assert not frozen.image_encoder.training and not frozen.text_encoder.training


def test_text_guided_region_selection_attends_to_the_top_k_regions_the_text_picks():
    """ULS-DRAM's selection: every token of a product attends to the same top_k regions (chosen by
    the text, not by the token), another text can pick others, and the scorer gets gradients."""
    from components.models.tagger import VisualGates

    torch.manual_seed(0)
    gates = VisualGates(8, image_dim=6, region_dim=5, global_gate=False, regional_gate=True, top_k=2)
    h, regions = torch.randn(3, 7, 8), torch.randn(1, 6, 5).repeat(3, 1, 1)  # one image, three texts
    texts = torch.randn(3, 8) * 5
    r = gates.region_proj(regions)
    attention = gates.region_attention(h, r, texts)
    assert torch.allclose(attention.sum(-1), torch.ones(3, 7))
    nonzero = attention > 0
    assert (nonzero.sum(-1) == 2).all()
    assert (nonzero == nonzero[:, :1]).all()  # the same regions for every token of a product
    picked = {tuple(nonzero[b, 0].nonzero().flatten().tolist()) for b in range(3)}
    assert len(picked) > 1  # the text decides which
    gates(h, torch.randn(3, 6), regions, torch.ones(3, dtype=torch.bool), text=texts).sum().backward()
    assert gates.select.weight.grad is not None and gates.select.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="pooled text"):
        gates(h, torch.randn(3, 6), regions, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="regional_visual_gate"):
        ExtractionConfig(image=TINY_IMAGE, global_visual_gate=True, region_top_k=2)
    model = _gated(region_top_k=1)  # through the model: the pooled text comes from the text encoder
    batch = model.tokenize(["Acme red shirt", "blue bag"], ["Shirts", "Bags"])
    out = model({**batch, "pixels": torch.rand(2, 3, 32, 32), "has_image": torch.tensor([True, False])})
    assert out.tag_logits.shape[:2] == batch["input_ids"].shape


def test_cached_encoder_outputs_give_the_same_tags_and_frozen_weights_are_not_saved(tmp_path):
    """The embedding cache's token vectors and image features stand in for the frozen encoders
    (the same tags), and a saved gated model leaves the frozen encoders' weights out but loads back equal."""
    from components.models.tagger import cached_inputs

    model = _gated(frozen_text=True, context_layers=1, attribute_head=True)
    texts, cats = ["Acme red shirt", "blue bag"], ["Shirts", "Bags"]
    batch = model.tokenize(texts, cats)
    pixels, has = torch.rand(2, 3, 32, 32), torch.tensor([True, True])
    direct = model({**batch, "pixels": pixels, "has_image": has})
    with torch.no_grad():
        t = model.text_encoder(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch})
        im = model.image_encoder(pixels)
    T = batch["input_ids"].shape[1]
    cache = {
        "text": t.pooled,
        "text_tokens": torch.cat([t.tokens, torch.zeros(2, 32 - T, t.tokens.shape[-1])], 1).half(),
        "image": im.pooled,
        "image_tokens": im.tokens.half(),
        "has_image": has,
    }
    cached = model({**batch, **cached_inputs(cache, torch.arange(2), T)})
    assert torch.allclose(direct.tag_logits, cached.tag_logits, atol=2e-2)
    saved = save_model(model, tmp_path / "m")
    from safetensors.torch import load_file

    keys = load_file(str(saved / "model.safetensors")).keys()
    assert not any(k.startswith(("image_encoder.", "text_encoder.")) for k in keys)
    assert any(k.startswith("gates.regional_gate") for k in keys) and any(k.startswith("context.") for k in keys)
    loaded = load_model(saved)
    again = loaded({**batch, "pixels": pixels, "has_image": has})
    assert torch.allclose(direct.tag_logits, again.tag_logits, atol=1e-5)


def test_gated_tagger_learns_what_only_the_image_tells():
    """Titles name two colours, the image says which one is the product's: the gated tagger learns
    to pick by the image (and, with the images swapped, picks wrong), the text-only one cannot."""
    torch.manual_seed(0)
    colours = ["red", "blue"]
    rows, feats = [], []
    for i in range(160):
        k = i % 2
        first, second = (colours[0], colours[1]) if (i // 2) % 2 else (colours[1], colours[0])
        text = f"shirt {first} and {second} stripes"
        start = text.index(colours[k])
        rows.append(
            SpanRow(str(i), text, "Shirts", {"colour": [colours[k]]}, [Span(start, start + len(colours[k]), "colour")])
        )
        feats.append(k)
    k = torch.tensor(feats)
    n = len(rows)
    image = torch.nn.functional.one_hot(k, 2).float().repeat(1, 3) + 0.05 * torch.randn(n, 6)
    features = {
        "image": image,
        "image_tokens": image[:, None, :].repeat(1, 2, 1),
        "has_image": torch.ones(n, dtype=torch.bool),
    }

    def trained(**gates):
        cfg = ExtractionTrainConfig(
            model=ExtractionConfig(text=TINY_TEXT, category_input=False, image=TINY_IMAGE if gates else None, **gates),
            training=ExtractionTrainingConfig(epochs=30, batch_size=16, lr_text=1e-3, lr_head=1e-2, warmup_share=0.0),
        )
        model = train_extractor(cfg, rows, features=_with_image_dims(features) if gates else None)
        return model

    def accuracy(model, feats):
        found = extract(model, [r.text for r in rows], [r.category for r in rows], features=feats)
        return np.mean(
            [
                best_values(f).get("colour") is not None and best_values(f)["colour"].text == r.values["colour"][0]
                for f, r in zip(found, rows, strict=True)
            ]
        )

    gated = trained(global_visual_gate=True, regional_visual_gate=True)
    text_only = trained()
    f = _with_image_dims(features)
    swapped = {**f, **{key: f[key][torch.roll(torch.arange(n), 1)] for key in ("image", "image_tokens")}}
    assert accuracy(gated, f) >= 0.9
    assert accuracy(gated, swapped) <= 0.3  # the image decides: the neighbour's image gives the other colour
    assert accuracy(text_only, None) <= 0.75


def _with_image_dims(features):
    """Pad the toy image features to the tiny image encoder's sizes (pooled dim, region dim)."""
    from components.models.encoders import ImageEncoder, ImageEncoderConfig

    enc = ImageEncoder(ImageEncoderConfig(**TINY_IMAGE))
    pad = lambda x, d: torch.nn.functional.pad(x, (0, d - x.shape[-1]))  # noqa: E731
    return {
        **features,
        "image": pad(features["image"], enc.dim),
        "image_tokens": pad(features["image_tokens"], enc.token_dim),
    }


def test_cli_trains_evaluates_and_predicts_an_extraction_model(tmp_path):
    """`attrflow train` with `task: extraction` on a catalog dataset (tiny encoders, the demo's category
    and pattern located in its titles), then `evaluate` by the counting rule and `predict` with offsets."""
    import yaml
    from typer.testing import CliRunner

    from attrflow.cli import app
    from components.catalog import ingest, load_spec
    from components.catalog.demo import write_demo_catalog

    spec = write_demo_catalog(tmp_path / "catalog", n=200, seed=3)
    dataset = ingest(load_spec(spec)).dataset_dir
    shipped = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "models" / "extraction.yaml").read_text()
    )
    shipped["attributes"] = ["category", "pattern"]
    shipped["model"].update(text=TINY_TEXT, image=TINY_IMAGE)
    shipped["training"].update(epochs=6, batch_size=16, lr_head=1e-2)
    config = tmp_path / "extraction.yaml"
    config.write_text(yaml.safe_dump(shipped))
    runner = CliRunner()
    out = tmp_path / "model"
    trained = runner.invoke(app, ["train", str(config), "--dataset", str(dataset), "--out", str(out), "--json"])
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.output.strip().splitlines()[-1])["validation"]["micro"]["f1"] > 0.5
    assert set(json.loads((out / "thresholds.json").read_text())) == {"category", "pattern"}

    evaluated = runner.invoke(app, ["evaluate", str(out), "--dataset", str(dataset), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output.strip().splitlines()[-1])
    assert set(report["per_attribute"]) == {"category", "pattern"} and report["micro"]["f1"] > 0.5

    title = "Lumen Sporty striped skirt"
    predicted = runner.invoke(app, ["predict", str(out), "--title", title, "--json"])
    assert predicted.exit_code == 0, predicted.output
    values = {v["attribute"]: v for v in json.loads(predicted.output)["values"]}
    assert (
        values["category"]["value"] == "skirt"
        and title[values["category"]["start"] : values["category"]["end"]] == "skirt"
    )
    assert isinstance(values["category"]["published"], bool)
    image = next((tmp_path / "catalog" / "images").iterdir())  # through the visual gates
    with_image = runner.invoke(app, ["predict", str(out), "--title", title, "--image", str(image), "--json"])
    assert with_image.exit_code == 0, with_image.output
    assert {v["attribute"] for v in json.loads(with_image.output)["values"]} <= {"category", "pattern"}
    bad = runner.invoke(app, ["predict", str(out), "--title", " "])
    assert bad.exit_code != 0 and "title" in bad.output


def test_extraction_endpoint_answers_over_http(tmp_path):
    """A real `bentoml serve serving.extraction:ExtractionService` on the registry's production
    version of a trained tiny model: values with offsets, score and published over HTTP; concurrent
    requests answered alike; a promotion taken by POST /reload (hot swap); a request without a title
    or with a broken image gets a 4xx; every answer is in the prediction log."""
    import base64
    import io
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from helpers import bentoml_serve
    from PIL import Image

    from components.registry import Registry

    rows = [
        SpanRow(str(i), f"{b} cotton shirt", "all", {"brand": [b]}, [Span(0, len(b), "brand")])
        for i, b in enumerate(["Acme", "Zorbo", "Kelvix", "Truvo"] * 8)
    ]
    cfg = ExtractionTrainConfig(
        model=ExtractionConfig(text=TINY_TEXT, category_input=False, image=TINY_IMAGE, global_visual_gate=True),
        training=ExtractionTrainingConfig(epochs=10, batch_size=8, lr_text=1e-3, lr_head=1e-2, warmup_share=0.0),
    )
    model_dir = save_model(train_extractor(cfg, rows), tmp_path / "model")
    (model_dir / "thresholds.json").write_text(json.dumps({"brand": 0.0}))
    with Registry() as registry:  # the test's own ATTRFLOW_HOME, which the server inherits
        run_id = registry.start_run("train", {})
        registry.promote("values", registry.register_model_version("values", run_id, model_dir, {}, {}).version)
    env = {
        "ATTRFLOW_MODEL_NAME": "values",
        "ATTRFLOW_POLL_SECONDS": "0",  # swaps only on /reload, so the test knows when
        "ATTRFLOW_LOG_FLUSH_SECONDS": "0.3",
        "BENTOML_HOME": str(tmp_path / "bentoml"),
    }
    with bentoml_serve("serving.extraction:ExtractionService", env, tmp_path / "server.log") as url:
        picture = io.BytesIO()
        Image.new("RGB", (40, 40), (200, 30, 30)).save(picture, format="PNG")
        title = "Truvo cotton shirt"
        ok = httpx.post(
            f"{url}/extract",
            json={"id": "p1", "title": title, "image": base64.b64encode(picture.getvalue()).decode()},
            timeout=60,
        )
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["id"] == "p1" and body["model"]["name"] == "values" and body["model"]["version"] == 1
        [brand] = [v for v in body["values"] if v["attribute"] == "brand"]
        assert title[brand["start"] : brand["end"]] == brand["text"] == "Truvo" and brand["published"] is True
        info = httpx.get(f"{url}/model", timeout=60).json()
        assert info["version"] == 1 and info["attributes"] == ["brand"] and info["image_size"] == [32, 32]

        titles = [f"{b} cotton shirt" for b in ["Acme", "Zorbo", "Kelvix", "Truvo"] * 4]
        with ThreadPoolExecutor(8) as pool:  # answered together (batched) and each like on its own
            answers = list(pool.map(lambda t: httpx.post(f"{url}/extract", json={"title": t}, timeout=60), titles))
        assert all(a.status_code == 200 for a in answers)
        alone = {t: httpx.post(f"{url}/extract", json={"title": t}, timeout=60).json()["values"] for t in set(titles)}
        assert all(a.json()["values"] == alone[t] for a, t in zip(answers, titles, strict=True))

        with Registry() as registry:  # a promotion: served after /reload, without a restart
            run_id = registry.start_run("train", {})
            v2 = registry.register_model_version("values", run_id, model_dir, {}, {}).version
            registry.promote("values", v2)
        reloaded = httpx.post(f"{url}/reload", timeout=120).json()
        assert reloaded["changed"] is True and reloaded["model"]["version"] == v2 == 2
        assert httpx.post(f"{url}/extract", json={"title": title}, timeout=60).json()["model"]["version"] == 2

        empty = httpx.post(f"{url}/extract", json={"title": " "}, timeout=60)
        assert empty.status_code == 422 and "title" in empty.json()["error"]
        broken = httpx.post(f"{url}/extract", json={"title": title, "image": "bm90IGFuIGltYWdl"}, timeout=60)
        assert 400 <= broken.status_code < 500 and "image" in broken.json()["error"]
        unknown = httpx.post(f"{url}/extract", json={"title": title, "colour": "red"}, timeout=60)
        assert 400 <= unknown.status_code < 500

    # every answer is in the prediction log (written on shutdown at the latest), the refused ones not
    from components.inference.prediction_log import read_prediction_log

    logged = read_prediction_log("values")
    assert len(logged) == 1 + len(titles) + len(set(titles)) + 1
    first = logged[logged["product_id"] == "p1"].iloc[0]
    assert first["model_version"] == 1 and first["has_image"] and first["image_width"] == 40
    assert [(p["attribute"], p["value"], p["published"]) for p in first["predictions"]] == [("brand", "Truvo", True)]
    assert logged["model_version"].tolist()[-1] == 2
