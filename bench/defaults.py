"""Defaults on catalogs attrflow has never seen: `attrflow fit` against TF-IDF + LR.

    make bench-defaults                                   # demo, ae-110k, oa-mine, fashion; 20-minute budget
    .venv/bin/python bench/defaults.py --catalogs demo,ae-110k --budget 5m

For each catalog, on one seeded split: `fit` with its defaults and the budget (components/training/
fit.py: the portfolio, then the best member or greedy ensemble on validation) against the bar,
scikit-learn's TfidfVectorizer (word 1-2 grams, sublinear tf) + LogisticRegression (C=10) on title +
description, one per attribute (one-vs-rest for multilabel attributes). Per attribute: macro-F1 and
R@P95 on test, and the paired-bootstrap 95% interval of fit - bar (the same resampled test products
for both). Target: fit at least as good on every attribute of every catalog (a tie = the interval
contains 0) and better on the mean.

Catalogs: the demo catalog (2,000 generated products with images); AE-110k and OA-Mine from
../shared/data/attribute-values/ used as text-only classification catalogs (predict `category`
from the title, train + test files pooled and split afresh, no images); the fashion catalog
(../shared/data/fashion-product-images-small, configs/catalogs/fashion.yaml). Writes
bench/results/defaults.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.bootstrap import paired_bootstrap  # noqa: E402
from bench.common import RESULTS, SPEC, log  # noqa: E402
from bench.compare import interval, run_record  # noqa: E402
from components.catalog import ingest, load_dataset, load_spec  # noqa: E402
from components.catalog.dataset import Dataset  # noqa: E402
from components.catalog.demo import write_demo_catalog  # noqa: E402
from components.evaluation.evaluate import predict_split  # noqa: E402
from components.evaluation.metrics import attribute_metrics  # noqa: E402
from components.features.preprocess import encode_labels  # noqa: E402
from components.memory import keep_freed_memory  # noqa: E402
from components.models.io import load_model  # noqa: E402
from components.settings import get_settings  # noqa: E402
from components.training.fit import FitConfig, fit, parse_duration  # noqa: E402

VALUES = ROOT.parent / "shared" / "data" / "attribute-values"
CATALOGS = ["demo", "ae-110k", "oa-mine", "fashion"]
METRICS = ("f1_macro", "r_at_p95")


def text_catalog(name: str, root: Path) -> Path:
    """A value-extraction benchmark as a classification catalog: id, title, category."""
    rows = []
    for part in ("train", "test"):
        with (VALUES / name / f"{part}.jsonl").open() as f:
            rows += [json.loads(line) for line in f if line.strip()]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "catalog.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "category"])
        for i, r in enumerate(rows):
            w.writerow([f"{name}-{i}", r["input"], r["category"]])
    spec = root / "spec.yaml"
    spec.write_text(
        f"name: {name}\nsource: catalog.csv\nid_column: id\ntitle_column: title\n"
        "attributes:\n  - {name: category, column: category}\n"
        "split: {seed: 0, validation: 0.15, test: 0.25}\n"
    )
    return spec


def catalog_dataset(name: str, home: Path) -> Dataset:
    if name == "demo":
        spec = write_demo_catalog(home / "bench" / "defaults" / "demo", n=2000, seed=0)
    elif name == "fashion":
        spec = SPEC
    else:
        spec = text_catalog(name, home / "bench" / "defaults" / name)
    return load_dataset(ingest(load_spec(spec)).dataset_dir)


def tfidf_bar(ds: Dataset, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The bar's test probabilities, attribute -> (N_test, n_values)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    split = ds.items["split"].to_numpy()
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    text = (ds.items["title"].fillna("") + " " + ds.items["description"].fillna("")).str.strip().to_numpy()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train, x_test = vec.fit_transform(text[tr]), vec.transform(text[te])
    out = {}
    for name, vocab in ds.vocab.items():
        y = labels[name]
        probs = np.zeros((len(te), len(vocab.values)))
        if vocab.kind == "multiclass":
            keep = y[tr] >= 0
            clf = LogisticRegression(C=10.0, max_iter=2000).fit(x_train[keep], y[tr][keep])
            probs[:, clf.classes_] = clf.predict_proba(x_test)
        else:
            keep = (y[tr] >= 0).all(axis=1)
            for j in range(len(vocab.values)):
                target = y[tr][keep, j]
                if target.min() == target.max():
                    probs[:, j] = target.max()
                    continue
                clf = LogisticRegression(C=10.0, max_iter=2000).fit(x_train[keep], target)
                probs[:, j] = clf.predict_proba(x_test)[:, 1]
        out[name] = probs
    return out


def run_catalog(name: str, budget: float, home: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    ds = catalog_dataset(name, home)
    log(f"{name}: {len(ds.items)} products, attributes {list(ds.vocab)}")
    labels = {k: v.numpy() for k, v in encode_labels(ds.items, ds.vocab).items()}
    te = np.flatnonzero(ds.items["split"].to_numpy() == "test")
    t1 = time.perf_counter()
    bar = tfidf_bar(ds, labels)
    bar_seconds = time.perf_counter() - t1
    t1 = time.perf_counter()
    fitted = fit(ds, home / "bench" / "defaults" / "models" / name, FitConfig(time_budget_seconds=budget), log=log)
    fit_seconds = time.perf_counter() - t1
    model_dir = fitted.model_dir
    probs = predict_split(load_model(model_dir), model_dir, ds, "test").probs
    attributes = {}
    for a, vocab in ds.vocab.items():
        y = labels[a][te]
        ours, theirs = attribute_metrics(probs[a], y, vocab.kind), attribute_metrics(bar[a], y, vocab.kind)
        ci = paired_bootstrap(probs[a], bar[a], y, vocab.kind, n=300)
        attributes[a] = {
            "kind": vocab.kind,
            "values": len(vocab.values),
            "fit": {m: ours[m] for m in METRICS},
            "tfidf_lr": {m: theirs[m] for m in METRICS},
            "difference_95": ci,
            # At least as good: the interval of fit - bar does not lie wholly below 0.
            "at_least_as_good": all(ci[m][1] >= 0 for m in METRICS),
        }
        log(
            f"{name} {a}: fit f1 {ours['f1_macro']:.3f} r@p95 {ours['r_at_p95']:.3f} | "
            f"tfidf f1 {theirs['f1_macro']:.3f} r@p95 {theirs['r_at_p95']:.3f} | {ci}"
        )
    mean = {
        who: {m: float(np.mean([v[who][m] or 0.0 for v in attributes.values()])) for m in METRICS}
        for who in ("fit", "tfidf_lr")
    }
    return {
        "products": len(ds.items),
        "test_products": len(te),
        "has_images": bool(ds.items["image_path"].notna().any()),
        "fit": {
            "weights": fitted.weights,
            "members": fitted.members,
            "skipped": fitted.skipped,
            "seconds": fit_seconds,
        },
        "tfidf_lr_seconds": bar_seconds,
        "attributes": attributes,
        "mean": mean,
        "met": all(v["at_least_as_good"] for v in attributes.values()),
        "seconds": time.perf_counter() - t0,
    }


def overall_mean(results: dict[str, Any]) -> dict[str, Any]:
    pairs = [v for c in results["catalogs"].values() for v in c["attributes"].values()]
    mean = {who: {m: float(np.mean([v[who][m] or 0.0 for v in pairs])) for m in METRICS} for who in ("fit", "tfidf_lr")}
    met = all(c["met"] for c in results["catalogs"].values()) and all(
        mean["fit"][m] > mean["tfidf_lr"][m] for m in METRICS
    )
    return {"pairs": len(pairs), **mean, "met": met}


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# attrflow fit vs TF-IDF + LR (budget {results['budget']})",
        "",
        f"{results['date']}, {results['machine']}. Command: `{results['command']}`.",
        "",
        "| catalog | attribute | fit macro-F1 | TF-IDF+LR macro-F1 | diff 95% | fit R@P95 | TF-IDF+LR R@P95 | diff 95% | at least as good |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in results["catalogs"].items():
        for a, v in c["attributes"].items():
            f, t, d = v["fit"], v["tfidf_lr"], v["difference_95"]
            lines.append(
                f"| {name} | {a} | {f['f1_macro']:.3f} | {t['f1_macro']:.3f} | {interval(d['f1_macro'])} "
                f"| {f['r_at_p95']:.3f} | {t['r_at_p95']:.3f} | {interval(d['r_at_p95'])} "
                f"| {'yes' if v['at_least_as_good'] else '**no**'} |"
            )
        m = c["mean"]
        lines.append(
            f"| {name} | **mean** | {m['fit']['f1_macro']:.3f} | {m['tfidf_lr']['f1_macro']:.3f} | | "
            f"{m['fit']['r_at_p95']:.3f} | {m['tfidf_lr']['r_at_p95']:.3f} | | {'yes' if c['met'] else '**no**'} |"
        )
    overall = overall_mean(results)
    lines += [
        "",
        f"Mean over every catalog's attributes ({overall['pairs']}): macro-F1 fit {overall['fit']['f1_macro']:.3f} "
        f"vs TF-IDF+LR {overall['tfidf_lr']['f1_macro']:.3f}, R@P95 {overall['fit']['r_at_p95']:.3f} vs "
        f"{overall['tfidf_lr']['r_at_p95']:.3f}. Target (at least as good on every attribute of every catalog, "
        f"better on the mean): **{'MET' if overall['met'] else 'NOT MET'}**.",
    ]
    lines += [
        "",
        "| catalog | products (test) | images | chosen model | members: validation macro-F1 (seconds) | skipped | fit s |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for name, c in results["catalogs"].items():
        members = ", ".join(f"{n} {m['validation']:.3f} ({m['seconds']:.0f})" for n, m in c["fit"]["members"].items())
        chosen = ", ".join(f"{n} x{w:g}" for n, w in c["fit"]["weights"].items())
        lines.append(
            f"| {name} | {c['products']} ({c['test_products']}) | {'yes' if c['has_images'] else 'no'} | {chosen} | "
            f"{members} | {', '.join(c['fit']['skipped']) or '-'} | {c['fit']['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalogs", default=",".join(CATALOGS))
    ap.add_argument("--budget", default="20m", help="fit's time budget per catalog")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    keep_freed_memory()
    home = get_settings().home.resolve()
    out_json = args.out / "defaults.json"
    results = json.loads(out_json.read_text()) if out_json.is_file() else {"catalogs": {}}
    results.update(budget=args.budget, **run_record("defaults.py"))
    for name in args.catalogs.split(","):
        if name not in CATALOGS:
            raise SystemExit(f"unknown catalog {name!r}; known: {CATALOGS}")
        results["catalogs"][name] = run_catalog(name, parse_duration(args.budget), home)
        args.out.mkdir(parents=True, exist_ok=True)
        results["overall"] = overall_mean(results)
        out_json.write_text(json.dumps(results, indent=1, default=float))  # after each catalog: partial runs count
        (args.out / "defaults.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
