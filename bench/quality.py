"""Quality benchmark on the real fashion catalog.

    make bench-quality                      # everything frozen (the default run), rows in 2 processes
    .venv/bin/python bench/quality.py --rows text,concat --skip-colour-hidden
    .venv/bin/python bench/quality.py --reuse      # recompute only rows whose config changed, then report
    .venv/bin/python bench/quality.py --finetune   # + the optional full fine-tuning rows (slow on CPU)
    make bench-seeds                        # run to run: text, concat, modality_attention_l0.1 with seeds 1, 2

Ingests ../shared/data/fashion-product-images-small/ with configs/catalogs/fashion.yaml, then on
the fixed seeded split compares, per attribute (articleType, baseColour, gender, season, usage),
accuracy, macro-F1, weighted-F1 and R@P95 on the test split of:

  1. TF-IDF (word 1-2 grams) + logistic regression on the title, one per attribute (the bar);
  2. attrflow `text` and `image` (single modality);
  3. attrflow `concat`, `late`, `cross_attention`;
  4. attrflow `modality_attention` with lambda_kl in {0, 1e-3, 1e-2, 1e-1} (+ image-weight stats);

all on frozen encoders over one embedding cache (components.features.cache), plus a second
table, "colour hidden in text": a derived catalog where a seeded 50% of products lost every
colour word from their title. Writes bench/results/quality.json, bench/results/quality.md and
plots, exports the best model (chosen on validation macro-F1) to
ATTRFLOW_HOME/bench/fashion-best/ and registers it as model `fashion` in the registry.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from components.catalog import ingest, load_dataset, load_spec  # noqa: E402
from components.catalog.dataset import Dataset  # noqa: E402
from components.evaluation.evaluate import predict_split  # noqa: E402
from components.evaluation.metrics import attribute_metrics, modality_weight_stats  # noqa: E402
from components.features.cache import cache_path, cached_encodings, save_atomic  # noqa: E402
from components.features.preprocess import encode_labels  # noqa: E402
from components.models.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig  # noqa: E402
from components.models.model import load_model  # noqa: E402
from components.settings import get_settings  # noqa: E402
from components.training.trainer import TrainConfig, train  # noqa: E402

ATTRIBUTES = ["articleType", "baseColour", "gender", "season", "usage"]
SPEC = ROOT / "configs" / "catalogs" / "fashion.yaml"
RESULTS = ROOT / "bench" / "results"
METRICS = ("accuracy", "f1_macro", "f1_weighted", "r_at_p95")
LAMBDAS = [0.0, 1e-3, 1e-2, 1e-1]
TFIDF_PROBS = Path("bench") / "quality" / "tfidf_lr-test-probs.npz"  # under ATTRFLOW_HOME

# Frozen encoders, shared by every attrflow row (one embedding cache). Images are 60x80
# (w x h); 128x96 (h x w) keeps their aspect ratio at ~1.6x, which EfficientNet-Lite0 handles
# far better than the native size and embeds at ~150 img/s on 2 cores. Multi-scale pooling
# (stages 0-3 pooled on a 3x3 grid, appended to the last stage's global pool) keeps the
# colour information that the ImageNet head discards. Titles are short: 32 tokens suffice.
ENCODERS: dict[str, Any] = {
    "text": {"name": "default", "pooling": "mean", "max_length": 32},
    "image": {"name": "default", "image_size": [128, 96], "extra_stages": [0, 1, 2, 3], "extra_grid": 3},
}
HEAD = {"hidden": 256, "dropout": 0.2}
# The lexical channel (components.features.lexical): a learned embedding of the title's hashed
# word 1-2 grams beside the MiniLM vector, for every row that reads the pooled text. It keeps
# the exact words ("Navy Blue", "Capris") that mean pooling blurs; n-gram dropout keeps it from
# memorising training titles. See docs/results.md, "What made the difference".
LEXICAL: dict[str, Any] = {"buckets": 2**17, "dim": 64, "dropout": 0.5}
TRAINING: dict[str, Any] = {
    "frozen": True,
    "epochs": 12,  # 14 epochs gained < 0.5 point of validation macro-F1 and missed the 45-minute budget
    "batch_size": 256,
    "lr_head": 2e-3,
    "weight_decay": 0.01,
    "warmup_share": 0.05,
    "grad_clip": 1.0,
    "patience": 3,
    "monitor": "f1_macro",
    "target_precision": 0.95,
    "seed": 0,
    "label_smoothing": 0.0,
    "logit_adjust_tau": 0.0,
    # Modality dropout: hide the image of half the products in each training batch, so the
    # heads cannot memorise rare products through 3,008 image dimensions and keep using the
    # title (what made multimodal rows beat `text`; see docs/results.md).
    "image_dropout": 0.5,
}

# name -> (fusion config, training overrides)
ROWS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text": ({"name": "text"}, {}),
    "image": ({"name": "image"}, {"image_dropout": 0.0}),  # no image, nothing to learn from
    "concat": ({"name": "concat"}, {}),
    "late": ({"name": "late", "alpha": None}, {}),
    # Token-level fusion: ~20x more work per item than the pooled fusions; fewer epochs.
    "cross_attention": ({"name": "cross_attention", "dim": 256, "heads": 4, "dropout": 0.1}, {"epochs": 5, "batch_size": 128, "lr_head": 1e-3}),
    # No image dropout here: hiding the image forces the gate to text, and it learns to stay there.
    **{f"modality_attention_l{lam:g}": ({"name": "modality_attention", "lambda_kl": lam, "per_attribute": True}, {"image_dropout": 0.0})
       for lam in LAMBDAS},
}
COLOUR_ROWS = ["text", "image", "concat", "modality_attention"]  # the last one with the best lambda
# The colour-hidden table reports baseColour only, so its rows train the baseColour head alone
# (the same fusion and settings; a fifth of the head compute).
COLOUR_ATTRIBUTES = ["baseColour"]

# Full fine-tuning (--finetune, after the frozen rows): each row starts from its frozen row's
# trained fusion and heads (`init_from`: linear probing, then fine-tuning, Kumar et al. 2022) and
# trains the encoders too, for a budget of optimizer steps: on this 2-core CPU the fused rows run
# at ~18 items/s a lane, so a full epoch (32k products) would take ~30 minutes a row.
FINETUNE_OF = ["text", "image", "concat", "modality_attention"]  # the last one with the best lambda
FINETUNE_PREFIX = "finetune-"
FINETUNE: dict[str, Any] = {"frozen": False, "epochs": 1, "max_steps": 200, "batch_size": 32, "lr_head": 1e-4,
                            "lr_text": 2e-5, "lr_image": 1e-4, "warmup_share": 0.1, "patience": 1}


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def train_config(fusion: dict[str, Any], overrides: dict[str, Any], attributes: list[str] = ATTRIBUTES) -> TrainConfig:
    reads_pooled_text = fusion["name"] not in ("image", "cross_attention")
    return TrainConfig.model_validate({
        "model": {**ENCODERS, "fusion": fusion, "head": HEAD, "attributes": attributes,
                  "lexical": LEXICAL if reads_pooled_text else None},
        "training": {**TRAINING, **overrides},
    })


def row_config(name: str, attributes: list[str] = ATTRIBUTES) -> TrainConfig:
    """The config of a row: one of ROWS, `ROW@seedN` (that row with training seed N), or
    `finetune-ROW` (that row's model fine-tuned with its encoders)."""
    if name.startswith(FINETUNE_PREFIX):
        base = name.removeprefix(FINETUNE_PREFIX)
        fusion, overrides = ROWS[base]
        init = get_settings().home.resolve() / "bench" / "quality" / base
        return train_config(fusion, {**overrides, **FINETUNE, "init_from": str(init)}, attributes)
    base, _, seed = name.partition("@seed")
    fusion, overrides = ROWS[base]
    return train_config(fusion, {**overrides, "seed": int(seed)} if seed else overrides, attributes)


def finetune_rows(out: Path, missing_ok: bool = False) -> list[str]:
    """The fine-tuning rows; `modality_attention` is the best lambda among the stored frozen rows."""
    rows = []
    for n in FINETUNE_OF:
        if n == "modality_attention":
            lambdas = [r for r in ROWS if r.startswith("modality_attention_l") and (out / "rows" / f"{r}.json").is_file()]
            n = best_on_validation({p: json.loads((out / "rows" / f"{p}.json").read_text()) for p in lambdas}, lambdas)
            if n is None:
                if missing_ok:
                    continue
                raise SystemExit("--finetune: run the frozen modality_attention rows first (make bench-quality)")
        rows.append(FINETUNE_PREFIX + n)
    return rows


def encoders() -> tuple[TextEncoder, ImageEncoder]:
    return TextEncoder(TextEncoderConfig(**ENCODERS["text"])), ImageEncoder(ImageEncoderConfig(**ENCODERS["image"]))


# --- the bar: TF-IDF + logistic regression ------------------------------------------------------

TFIDF_CONFIG = {"vectorizer": "TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)", "classifier": "LogisticRegression(C=10, lbfgs)"}

def tfidf_row(ds: Dataset, labels: dict[str, np.ndarray], probs_path: Path) -> dict[str, Any]:
    """Fit and score the bar; its test probabilities go to `probs_path` (for the paired bootstrap)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    split = ds.items["split"].to_numpy()
    titles = ds.items["title"].fillna("").to_numpy()
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    start = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vec.fit_transform(titles[tr])
    x_test = vec.transform(titles[te])
    out: dict[str, Any] = {"attributes": {}, "train_seconds": 0.0}
    test_probs = {}
    for name in ATTRIBUTES:
        y = labels[name]
        keep = tr[y[tr] >= 0]
        t0 = time.perf_counter()
        clf = LogisticRegression(C=10.0, max_iter=2000)
        clf.fit(x_train[np.searchsorted(tr, keep)], y[keep])
        log(f"tfidf+lr {name}: fit {time.perf_counter() - t0:.0f}s")
        # Columns of predict_proba are clf.classes_; spread them into the full vocabulary.
        probs = np.zeros((len(te), len(ds.vocab[name].values)))
        probs[:, clf.classes_] = clf.predict_proba(x_test)
        out["attributes"][name] = _metrics(probs, y[te])
        test_probs[name] = probs.astype(np.float32)
    out["train_seconds"] = time.perf_counter() - start
    probs_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(probs_path, **test_probs)
    out["items_per_second"] = len(tr) * len(ATTRIBUTES) / out["train_seconds"]
    out["config"] = TFIDF_CONFIG
    return out


def _metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    m = attribute_metrics(probs, y, "multiclass")
    return {k: m[k] for k in (*METRICS, "n")}


# --- attrflow rows --------------------------------------------------------------------------------

def attrflow_row(name: str, cfg: TrainConfig, ds: Dataset, out_root: Path, labels: dict[str, np.ndarray],
                 masked: np.ndarray | None = None) -> dict[str, Any]:
    model_dir = out_root / name
    log(f"{name}: training -> {model_dir}")
    start = time.perf_counter()
    result = train(cfg, ds, model_dir, progress=False,
                   on_epoch_end=lambda e, r: log(f"  {name} epoch {e}: loss {r['train_loss']:.4f} val f1_macro {r['validation']['f1_macro']:.4f} ({r['items_per_second']:.0f} items/s)"))
    seconds = time.perf_counter() - start
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_dir, device)
    te = np.flatnonzero(ds.items["split"].to_numpy() == "test")
    pred = predict_split(model, model_dir, ds, "test")
    # Validation and test scores beside the model: what the ensemble selection reads.
    save_probs(model_dir, result.validation_probs, pred.probs)
    row: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "model_dir": str(model_dir),
        "hardware": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} torch threads)",
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": seconds,
        "items_per_second": result.items_per_second,
        "validation_f1_macro": float(np.mean([m["f1_macro"] for m in result.validation.values()])),
        "attributes": {},
    }
    for a, spec in enumerate(model.specs):
        y = labels[spec.name][te]
        row["attributes"][spec.name] = _metrics(pred.probs[spec.name], y)
        if masked is not None:
            sub = masked[te]
            row["attributes"][spec.name]["masked"] = _metrics(pred.probs[spec.name][sub], y[sub])
            row["attributes"][spec.name]["unmasked"] = _metrics(pred.probs[spec.name][~sub], y[~sub])
        if pred.modality_weights is not None:
            w = pred.modality_weights[pred.has_image, a, 1]
            row["attributes"][spec.name]["image_weight"] = modality_weight_stats(w)
    if pred.modality_weights is not None:
        row["_image_weights"] = {s.name: pred.modality_weights[pred.has_image, a, 1] for a, s in enumerate(model.specs)}
    log(f"{name}: {seconds:.0f}s, test f1_macro " + " ".join(f"{k} {v['f1_macro']:.3f}" for k, v in row["attributes"].items()))
    return row


# --- the ensemble ------------------------------------------------------------------------------------

ENSEMBLE = "ensemble"


def probs_path(model_dir: Path) -> Path:
    """Beside each row's model folder (not in it, so exports stay clean): its validation and test probabilities."""
    return Path(model_dir).with_name(Path(model_dir).name + ".probs.npz")


def save_probs(model_dir: Path, validation: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> None:
    np.savez_compressed(probs_path(model_dir), **{f"validation.{a}": p for a, p in validation.items()},
                        **{f"test.{a}": p for a, p in test.items()})


def row_probs(model_dir: Path, ds: Dataset) -> dict[str, dict[str, np.ndarray]]:
    """{"validation": {attribute: probs}, "test": ...} of a row's model (computed if an older run left none)."""
    path = probs_path(model_dir)
    if not path.is_file():
        model = load_model(model_dir)
        save_probs(model_dir, *(predict_split(model, model_dir, ds, s).probs for s in ("validation", "test")))
    out: dict[str, dict[str, np.ndarray]] = {"validation": {}, "test": {}}
    for key, p in np.load(path).items():
        s, _, a = key.partition(".")
        out[s][a] = p
    return out


def ensemble_row(rows: dict[str, Any], ds: Dataset, labels: dict[str, np.ndarray], out_dir: Path) -> dict[str, Any]:
    """An ensemble of the trained attrflow rows (components.models.ensemble): members picked by
    greedy selection with replacement on validation mean macro-F1, the criterion that picks the
    best row; test is not looked at. Written as a model folder that load_model reads."""
    from components.models.ensemble import combine_models, select_members

    start = time.perf_counter()
    pool = [n for n in rows if n in ROWS]
    split = ds.items["split"].to_numpy()
    va, te = np.flatnonzero(split == "validation"), np.flatnonzero(split == "test")
    probs = {n: row_probs(Path(rows[n]["model_dir"]), ds) for n in pool}
    y_val = {a: labels[a][va] for a in ATTRIBUTES}
    weights = select_members({n: p["validation"] for n, p in probs.items()}, y_val, {a: "multiclass" for a in ATTRIBUTES})
    total = sum(weights.values())

    def mix(s: str) -> dict[str, np.ndarray]:
        return {a: sum(w * probs[n][s][a] for n, w in weights.items()) / total for a in ATTRIBUTES}

    val, test = mix("validation"), mix("test")
    combine_models({n: rows[n]["model_dir"] for n in weights}, weights, val, y_val, out_dir, extra={"bench_pool": pool})
    save_probs(out_dir, val, test)
    log(f"ensemble: {weights} (from {len(pool)} rows, {time.perf_counter() - start:.0f}s)")
    return {
        "config": {"selection": "greedy forward selection with replacement (Caruana et al. 2004), validation mean macro-F1",
                   "pool": pool, "weights": weights},
        "model_dir": str(out_dir),
        # Training an ensemble is training its members, one after another.
        "train_seconds": sum(rows[n]["train_seconds"] for n in weights) + time.perf_counter() - start,
        "items_per_second": 1.0 / sum(1.0 / rows[n]["items_per_second"] for n in weights),
        "validation_f1_macro": float(np.mean([_metrics(val[a], y_val[a])["f1_macro"] for a in ATTRIBUTES])),
        "attributes": {a: _metrics(test[a], labels[a][te]) for a in ATTRIBUTES},
    }


# --- "colour hidden in text" ------------------------------------------------------------------------

def colour_words(values: list[str]) -> list[str]:
    words = {w.lower() for v in values for w in re.split(r"[\s/-]+", v) if w}
    return sorted(words, key=lambda w: (-len(w), w))


def build_colour_hidden_catalog(home: Path, colours: list[str], seed: int = 0, share: float = 0.5) -> Path:
    """Write ATTRFLOW_HOME/bench/fashion-colour-hidden/ (CSV + spec + hard-linked images) and return the spec path.

    Every word of the baseColour vocabulary is removed (case-insensitive, whole words) from the
    titles of a seeded `share` of products (all splits); a `colour_hidden` column marks them.
    Images are hard links to the originals (same bytes; ingest keeps images inside the catalog folder).
    """
    spec = load_spec(SPEC)
    out = home / "bench" / "fashion-colour-hidden"
    spec_path = out / "fashion-colour-hidden.yaml"
    if spec_path.is_file():
        return spec_path
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    src_images = spec.source.parent / "images"
    for f in src_images.iterdir():
        try:
            os.link(f, tmp / "images" / f.name)
        except OSError:
            shutil.copy2(f, tmp / "images" / f.name)
    pattern = re.compile(r"\b(?:" + "|".join(map(re.escape, colours)) + r")\b", re.IGNORECASE)
    with spec.source.open(newline="", encoding="utf-8") as fin, (tmp / "styles.csv").open("w", newline="", encoding="utf-8") as fout:
        reader, writer = csv.reader(fin), csv.writer(fout)
        header = next(reader)
        title_col = header.index(spec.title_column)
        writer.writerow([*header, "colour_hidden"])
        rows = list(reader)
        hide = np.zeros(len(rows), dtype=bool)
        hide[np.random.default_rng(seed).permutation(len(rows))[: int(round(share * len(rows)))]] = True
        for row, h in zip(rows, hide):
            if h and len(row) == len(header):
                row = list(row)
                row[title_col] = re.sub(r"\s+", " ", pattern.sub(" ", row[title_col])).strip()
            writer.writerow([*row, int(h)])
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name="fashion-colour-hidden", source="styles.csv")
    (tmp / spec_path.name).write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return spec_path


@torch.no_grad()
def derive_encodings(ds: Dataset, base: Dataset, text: TextEncoder, image: ImageEncoder) -> float:
    """Seed the derived catalog's embedding cache from the original's: images are byte-identical
    (same image_sha256), so only the changed titles are run through the text encoder."""
    path = cache_path(ds, text, image, with_tokens=False)
    if path.is_file():
        return 0.0
    start = time.perf_counter()
    base_enc = cached_encodings(base, text, image, progress=False)
    pos = {i: k for k, i in enumerate(base.items["id"].tolist())}
    idx = np.array([pos[i] for i in ds.items["id"].tolist()])
    assert (ds.items["image_sha256"].to_numpy() == base.items["image_sha256"].to_numpy()[idx]).all()
    vec = base_enc.text[idx].clone()
    titles = ds.items["title"].fillna("").to_numpy()
    changed = np.flatnonzero(titles != base.items["title"].fillna("").to_numpy()[idx])
    text.eval()
    for i in range(0, len(changed), 256):
        rows = changed[i : i + 256]
        vec[rows] = text(**text.tokenize(list(titles[rows]), [""] * len(rows))).pooled
    save_atomic({"text": vec.contiguous(), "image": base_enc.image[idx].contiguous(), "has_image": base_enc.has_image[idx].contiguous()}, path)
    log(f"colour-hidden cache: re-encoded {len(changed)} changed titles, images reused ({time.perf_counter() - start:.0f}s)")
    return time.perf_counter() - start


# --- registry, export, plots, report ----------------------------------------------------------------

def register_best(model_dir: Path, metrics: dict[str, Any], ds: Dataset, row_name: str) -> dict[str, Any]:
    """Register the best model as `fashion` in the registry (components.registry) and let the
    registry decide promotion (by its primary metric, r_at_p95_mean)."""
    from components.registry import Registry

    try:
        flat: dict[str, Any] = {f"{a}.{k}": v for a, m in metrics.items() for k, v in m.items() if isinstance(v, (int, float))}
        for k in ("f1_macro", "r_at_p95", "accuracy"):
            flat[f"{k}_mean"] = float(np.mean([m[k] for m in metrics.values()]))
        thresholds = json.loads((model_dir / "thresholds.json").read_text())
        with Registry() as reg:
            reg.register_dataset(ds.name, ds.version, ds.path, ds.manifest)
            config = json.loads((model_dir / "config.json").read_text())
            run_id = reg.start_run("bench-quality", {**config, "bench_row": row_name}, dataset=(ds.name, ds.version))
            reg.finish_run(run_id, flat)
            version, decision = reg.register_and_decide("fashion", run_id, model_dir, flat, thresholds)
            return {"status": "registered", "name": "fashion", "version": version.version, "stage": version.stage,
                    "run_id": run_id, "decision": decision.reason, "promoted": decision.promote}
    except Exception as e:  # the results are still written; the report says what failed
        log(f"registry: registering the best model failed: {e!r}")
        return {"status": "failed", "reason": repr(e)}


def plot_modality_weights(weights: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    from matplotlib.figure import Figure

    names = list(weights)
    fig = Figure(figsize=(10, 3.2), dpi=90)
    axes = fig.subplots(1, len(ATTRIBUTES), sharey=True)
    for ax, attr in zip(axes, ATTRIBUTES):
        ax.boxplot([weights[n][attr] for n in names], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [n.split("_l")[-1] for n in names], fontsize=7)
        ax.set_title(attr, fontsize=9)
        ax.set_xlabel("lambda", fontsize=8)
    axes[0].set_ylabel("image weight")
    fig.tight_layout()
    fig.savefig(path)


def plot_pr(model_dir: Path, ds: Dataset, path: Path) -> None:
    from matplotlib.figure import Figure

    from components.evaluation.evaluate import ranking
    from components.evaluation.metrics import precision_recall_points

    model = load_model(model_dir)
    te = np.flatnonzero(ds.items["split"].to_numpy() == "test")
    probs = row_probs(model_dir, ds)["test"]  # stored by the row (or the ensemble), not scored again
    labels = {k: v.numpy()[te] for k, v in encode_labels(ds.items, model.vocab).items()}
    fig = Figure(figsize=(5.5, 4), dpi=90)
    ax = fig.subplots()
    for spec in model.specs:
        s, c, n = ranking(probs[spec.name], labels[spec.name], spec.kind)
        p, r = precision_recall_points(s, c, n)
        ax.plot(r, p, label=spec.name, lw=1.2)
    ax.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("recall (top-1 correct)")
    ax.set_ylabel("precision")
    ax.set_ylim(0.5, 1.005)
    ax.legend(fontsize=8)
    ax.set_title(f"PR curves, test: {model_dir.name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)


def environment(ds: Dataset) -> dict[str, Any]:
    import sklearn
    import timm
    import transformers

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except Exception:
        pass
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "scikit_learn": sklearn.__version__,
        "dataset": {"name": ds.name, "version": ds.version, "path": str(ds.path), "splits": ds.manifest["counts"]["splits"]},
        "image_size": ENCODERS["image"]["image_size"],
        "encoders": ENCODERS,
        "head": HEAD,
        "training": TRAINING,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Quality benchmark: fashion catalog (test split, {results['environment']['dataset']['splits']['test']} products)", ""]
    env = results["environment"]
    lines += [f"{env['date']} · {env['cpu']} ({env['cpu_count']} cores) · torch {env['torch']} · transformers {env['transformers']} · timm {env['timm']} · image {env['image_size'][0]}x{env['image_size'][1]} (h x w)", ""]
    rows = results["rows"]
    for metric, title in (("f1_macro", "macro-F1"), ("r_at_p95", "R@P95"), ("accuracy", "accuracy"), ("f1_weighted", "weighted-F1")):
        lines += [f"## {title}", "", "| row | " + " | ".join(ATTRIBUTES) + " | mean | train s | items/s |", "|---" * (len(ATTRIBUTES) + 4) + "|"]
        for name, row in rows.items():
            vals = [row["attributes"][a][metric] for a in ATTRIBUTES]
            lines.append(f"| {name}{' **(best)**' if name == results.get('best') else ''} | " + " | ".join(f"{v:.3f}" for v in vals)
                         + f" | {np.mean(vals):.3f} | {row['train_seconds']:.0f} | {row['items_per_second']:.0f} |")
        lines.append("")
    if ENSEMBLE in rows:
        ens = rows[ENSEMBLE]["config"]
        lines += [f"`{ENSEMBLE}`: " + ", ".join(f"{n} x{w:g}" for n, w in ens["weights"].items())
                  + f" (picked from {len(ens['pool'])} rows by {ens['selection']}; its validation score is the one it was picked on)", ""]
    ma = {n: r for n, r in rows.items() if n.startswith("modality_attention")}
    if ma:
        lines += ["## modality_attention: image weight per attribute (test, mean ± std)", "", "| lambda | " + " | ".join(ATTRIBUTES) + " |", "|---" * (len(ATTRIBUTES) + 1) + "|"]
        for n, r in ma.items():
            lines.append(f"| {n.split('_l')[-1]} | " + " | ".join(f"{r['attributes'][a]['image_weight']['mean']:.3f} ± {r['attributes'][a]['image_weight']['std']:.3f}" for a in ATTRIBUTES) + " |")
        lines.append("")
    ch = results.get("colour_hidden")
    if ch:
        lines += [f"## Colour hidden in text ({ch['share']:.0%} of titles without colour words; baseColour on test)", "",
                  "| row | macro-F1 masked | macro-F1 unmasked | macro-F1 overall | accuracy masked | R@P95 masked |", "|---|---|---|---|---|---|"]
        for n, r in ch["rows"].items():
            b = r["attributes"]["baseColour"]
            lines.append(f"| {n} | {b['masked']['f1_macro']:.3f} | {b['unmasked']['f1_macro']:.3f} | {b['f1_macro']:.3f} | {b['masked']['accuracy']:.3f} | {b['masked']['r_at_p95']:.3f} |")
        lines.append("")
    t = results.get("timing", {})
    if t:
        lines += ["## Timing", ""] + [f"- {k}: {v:.0f} s" for k, v in t.items()]
        if "embedding_cache_computed" in results:
            lines.append(f"- embedding cache when computed: {results['embedding_cache_computed']['seconds']:.0f} s")
        lines += [f"- row {k}: {v:.0f} s" for k, v in results.get("row_seconds", {}).items() if v is not None] + [""]
    if results.get("timing_finetune"):
        lines += ["## Timing of the fine-tuning run (make bench-finetune)", ""] + [f"- {k}: {v:.0f} s" for k, v in results["timing_finetune"].items()] + [""]
    tuned = {n: r for n, r in rows.items() if n.startswith(FINETUNE_PREFIX)}
    if tuned:
        lines += ["## Fine-tuning rows", "", "| row | started from | steps x batch (products, share of an epoch) | hardware | validation macro-F1 |", "|---|---|---|---|---|"]
        for n, r in tuned.items():
            tr = r["config"]["training"]
            seen = tr["max_steps"] * tr["batch_size"]
            lines.append(f"| {n} | `{n.removeprefix(FINETUNE_PREFIX)}` (frozen row) | {tr['max_steps']} x {tr['batch_size']} ({seen:,}, "
                         f"{seen / results['environment']['dataset']['splits']['train']:.2f}) | {r.get('hardware', '?')} | {r['validation_f1_macro']:.3f} |")
        lines.append("")
    tg = results.get("targets")
    if tg:
        lines += ["## Targets", ""] + [f"- {k}: {'MET' if v['met'] else 'NOT MET'} ({v['detail']})" for k, v in tg.items()] + [""]
    return "\n".join(lines)


def best_on_validation(rows: dict[str, Any], names) -> str | None:
    """The row among `names` with the best validation mean macro-F1: how every pick here is made."""
    return max(names, key=lambda n: rows[n]["validation_f1_macro"], default=None)


def best_lambda(rows: dict[str, Any]) -> str | None:
    return best_on_validation(rows, [n for n in rows if n.startswith("modality_attention_l")])


def best_single_and_multimodal(rows: dict[str, Any]) -> tuple[str | None, str | None]:
    """The single-modality and the multimodal attrflow rows with the best validation macro-F1."""
    single = best_on_validation(rows, [n for n in ("text", "image") if n in rows])
    return single, best_on_validation(rows, [n for n in rows if (n in ROWS or n == ENSEMBLE) and n not in ("text", "image")])


def seed_spread(rows: dict[str, Any], seeded: dict[str, Any]) -> dict[str, Any]:
    """Run to run: for each row trained with extra seeds (`ROW@seedN`), its test metrics per seed
    (the row itself is seed 0), their mean and standard deviation, and in how many seeds it beats
    TF-IDF+LR, per attribute."""
    out: dict[str, Any] = {}
    for base in dict.fromkeys(n.partition("@seed")[0] for n in seeded):
        runs = ([rows[base]] if base in rows else []) + [r for n, r in seeded.items() if n.partition("@seed")[0] == base]
        entry: dict[str, Any] = {"seeds": [r["config"]["training"]["seed"] for r in runs],
                                 "validation_f1_macro": [r["validation_f1_macro"] for r in runs]}
        for metric in ("f1_macro", "r_at_p95"):
            entry[metric] = {}
            for a in ATTRIBUTES:
                vals = np.array([r["attributes"][a][metric] for r in runs])
                bar = rows["tfidf_lr"]["attributes"][a][metric]
                entry[metric][a] = {"values": vals.tolist(), "mean": float(vals.mean()), "std": float(vals.std()),
                                    "beats_tfidf": int((vals > bar).sum())}
        out[base] = entry
    return out


def seeds_markdown(spread: dict[str, Any], tfidf: dict[str, Any]) -> str:
    lines = ["# Run to run: training seeds (fashion catalog, test split)", "",
             "Test metrics over training seeds (seed 0 is the quality benchmark's row): mean ± standard deviation, "
             "and in how many seeds the row beats TF-IDF+LR.", ""]
    for metric, title in (("f1_macro", "macro-F1"), ("r_at_p95", "R@P95")):
        lines += [f"| {title} | seeds | validation macro-F1 | " + " | ".join(ATTRIBUTES) + " |", "|---" * (len(ATTRIBUTES) + 3) + "|",
                  "| tfidf_lr | | | " + " | ".join(f"{tfidf['attributes'][a][metric]:.3f}" for a in ATTRIBUTES) + " |"]
        for n, e in spread.items():
            cells = [f"{e[metric][a]['mean']:.3f} ± {e[metric][a]['std']:.3f} ({e[metric][a]['beats_tfidf']}/{len(e['seeds'])})" for a in ATTRIBUTES]
            val = e["validation_f1_macro"]
            lines.append(f"| {n} | {','.join(map(str, e['seeds']))} | {np.mean(val):.3f} ± {np.std(val):.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def paired_bootstrap(probs_a: np.ndarray, probs_b: np.ndarray, y: np.ndarray, n: int = 500, seed: int = 0) -> dict[str, list[float]]:
    """95 % interval of metric(a) - metric(b) when the test products are resampled with
    replacement (the same resample for both models): how far the difference is from noise."""
    from sklearn.metrics import f1_score

    from components.evaluation.metrics import r_at_p, ranking

    keep = y >= 0
    probs_a, probs_b, y = probs_a[keep], probs_b[keep], y[keep]

    def scores(p: np.ndarray, yy: np.ndarray) -> dict[str, float]:  # the two target metrics, as attribute_metrics computes them
        return {"f1_macro": f1_score(yy, p.argmax(1), average="macro", zero_division=0), "r_at_p95": r_at_p(*ranking(p, yy, "multiclass"))}

    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {"f1_macro": [], "r_at_p95": []}
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        ma, mb = scores(probs_a[i], y[i]), scores(probs_b[i], y[i])
        for m, d in diffs.items():
            d.append(ma[m] - mb[m])
    return {m: [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] for m, d in diffs.items()}


def _compare(rows, a: str, b: str, metric: str, intervals) -> dict[str, Any]:
    """Row a minus row b on `metric` per attribute; `intervals(a, b, attribute)` gives the
    bootstrap intervals (None when the rows' test probabilities are not at hand)."""
    diff = {attr: rows[a]["attributes"][attr][metric] - rows[b]["attributes"][attr][metric] for attr in ATTRIBUTES}
    out: dict[str, Any] = {"met": all(d > 0 for d in diff.values()), "diff": diff}
    ci = {attr: intervals(a, b, attr) for attr in ATTRIBUTES}
    if all(v is not None for v in ci.values()):
        out["ci95"] = {attr: v[metric] for attr, v in ci.items()}
    out["detail"] = ", ".join(f"{attr} {d:+.3f}" + (" [{:+.3f}, {:+.3f}]".format(*out["ci95"][attr]) if "ci95" in out else "")
                              for attr, d in diff.items())
    return out


def check_targets(results: dict[str, Any], probs: dict[str, dict[str, np.ndarray]], y_test: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each target with the per-attribute differences and, where both rows' test probabilities
    are at hand, their paired-bootstrap 95 % intervals."""
    rows = results["rows"]
    memo: dict[tuple[str, str, str], dict[str, list[float]]] = {}

    def intervals(a: str, b: str, attr: str) -> dict[str, list[float]] | None:
        if a not in probs or b not in probs:
            return None
        if (a, b, attr) not in memo:  # one resampling gives both metrics
            memo[a, b, attr] = paired_bootstrap(probs[a][attr], probs[b][attr], y_test[attr])
        return memo[a, b, attr]

    out = {}
    for metric in ("f1_macro", "r_at_p95"):
        out[f"best beats TF-IDF+LR on {metric}"] = _compare(rows, results["best"], "tfidf_lr", metric, intervals)
    single, multi = best_single_and_multimodal(rows)
    if single and multi:
        out[f"best multimodal ({multi}) beats best single-modality ({single}) on f1_macro"] = _compare(rows, multi, single, "f1_macro", intervals)
    ch = results.get("colour_hidden")
    if ch and "text" in ch["rows"]:
        multi = [n for n in ch["rows"] if n not in ("text", "image")]
        bm = best_on_validation(ch["rows"], multi)
        d = ch["rows"][bm]["attributes"]["baseColour"]["masked"]["f1_macro"] - ch["rows"]["text"]["attributes"]["baseColour"]["masked"]["f1_macro"]
        out["colour hidden: best multimodal >= text + 0.15 on masked baseColour macro-F1"] = {"met": d >= 0.15, "detail": f"{bm} {d:+.3f}"}
    return out


def strip_private(obj):
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not k.startswith("_")}
    return obj


def _run_row(out: Path, name: str, config: dict[str, Any], fn, reuse: bool) -> dict[str, Any]:
    """Run one row, or (with --reuse) read it back from bench/results/rows/NAME.json when its config is unchanged."""
    path = out / "rows" / f"{name}.json"
    if reuse and path.is_file():
        old = json.loads(path.read_text())
        if old.get("config") == json.loads(json.dumps(config)):
            log(f"{name}: reusing {path}")
            return old
    start = time.perf_counter()
    row = strip_private(fn())
    row["wall_seconds"] = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")  # rows are read while other processes write theirs
    tmp.write_text(json.dumps(row, indent=1, default=float))
    tmp.replace(path)
    return row


def plot_weights_of(model_dirs: dict[str, Path], ds: Dataset, path: Path) -> None:
    weights = {}
    for name, d in model_dirs.items():
        model = load_model(d)
        pred = predict_split(model, d, ds, "test")
        weights[name] = {s.name: pred.modality_weights[pred.has_image, a, 1] for a, s in enumerate(model.specs)}
    plot_modality_weights(weights, path)


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the system.

    Each training step and each encoder batch allocates and frees tensors above glibc's 32 MB
    mmap threshold (the lexical table's gradient, the CNN's activations for 128 images): by
    default each is a fresh mmap whose pages the kernel zeroes on first touch. Keeping them
    made the embedding cache ~40% and a frozen row ~10% faster on the 2-core machine, with
    identical outputs. A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)  # large blocks come from the heap too
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # and freed ones stay there


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="all", help="comma-separated attrflow rows, 'all' (default) or 'none': " + ",".join(ROWS))
    ap.add_argument("--reuse", action="store_true", help="reuse rows already in bench/results/rows/ whose config is unchanged")
    ap.add_argument("--skip-tfidf", action="store_true")
    ap.add_argument("--skip-colour-hidden", action="store_true")
    ap.add_argument("--colour-rows", default=",".join(COLOUR_ROWS), help="rows of the colour-hidden table to run")
    ap.add_argument("--no-report", action="store_true", help="only compute rows (e.g. to run several processes side by side)")
    ap.add_argument("--finetune", action="store_true", help="also run the (slow) fine-tuning rows, after the frozen ones: "
                    + ",".join(FINETUNE_PREFIX + n for n in FINETUNE_OF) + " (best lambda)")
    ap.add_argument("--seeds", default="", help="comma-separated extra training seeds: each selected row is also trained "
                    "as ROW@seedN (the run-to-run table; the default seed is 0)")
    ap.add_argument("--jobs", type=int, default=2, help="run the rows in this many processes side by side, one torch thread "
                    "each (default 2: one per core of the reference machine); 1 = one after another in this process")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    # Set by the parent for its lane processes: the already ingested dataset folders.
    ap.add_argument("--dataset", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--colour-dataset", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()
    home = get_settings().home.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timing: dict[str, float] = {}

    t0 = time.perf_counter()
    ds = load_dataset(args.dataset or ingest(load_spec(SPEC)).dataset_dir)
    timing["ingest"] = time.perf_counter() - t0
    log(f"dataset {ds.name}/{ds.version}: {ds.manifest['counts']['splits']}")
    labels = {k: v.numpy() for k, v in encode_labels(ds.items, {a: ds.vocab[a] for a in ATTRIBUTES}).items()}
    results: dict[str, Any] = {"environment": environment(ds), "rows": {}}

    # One embedding cache for every frozen row (with tokens, for cross_attention; the pooled part
    # is stored as its own file too, which is what the other rows read).
    t0 = time.perf_counter()
    text_enc, image_enc = encoders()
    hit = cache_path(ds, text_enc, image_enc, True).is_file()
    if not hit:
        cached_encodings(ds, text_enc, image_enc, with_tokens=True, batch_size=128)
    timing["embedding cache" + (" (reused)" if hit else "")] = time.perf_counter() - t0
    log(f"embedding cache {'reused' if hit else 'computed'} in {time.perf_counter() - t0:.0f}s")
    cache_record = args.out / "rows" / "embedding_cache.json"
    if not hit:  # remember how long computing it took, for reports of later runs that reuse it
        cache_record.parent.mkdir(parents=True, exist_ok=True)
        cache_record.write_text(json.dumps({"seconds": time.perf_counter() - t0, "products": len(ds.items),
                                            "path": str(cache_path(ds, text_enc, image_enc, True))}, indent=1))

    names = list(ROWS) if args.rows == "all" else [] if args.rows == "none" else args.rows.split(",")
    if args.finetune:
        names += finetune_rows(args.out)
    names += [f"{n}@seed{s}" for n in names if n in ROWS for s in args.seeds.split(",") if s]
    colour_rows = [] if args.skip_colour_hidden else [r for r in args.colour_rows.split(",") if r]

    ds_ch = hidden = None
    if colour_rows:
        t0 = time.perf_counter()
        colours = colour_words(ds.vocab["baseColour"].values)
        spec_path = build_colour_hidden_catalog(home, colours)
        ds_ch = load_dataset(args.colour_dataset or ingest(load_spec(spec_path)).dataset_dir)
        hidden = ds_ch.items["id"].map(dict(zip(*_hidden_ids(spec_path)))).fillna(False).astype(bool).to_numpy()
        same_split = bool((ds_ch.items.set_index("id")["split"] == ds.items.set_index("id")["split"].reindex(ds_ch.items["id"])).all())
        derive_encodings(ds_ch, ds, text_enc, image_enc)
        timing["colour-hidden catalog + cache"] = time.perf_counter() - t0
        results["colour_hidden"] = {
            "share": 0.5, "seed": 0, "colour_words": colours, "dataset": {"name": ds_ch.name, "version": ds_ch.version},
            "same_split_as_original": same_split,
            "masked_test_products": int(hidden[ds_ch.items["split"].to_numpy() == "test"].sum()),
        }
        (args.out / "rows" / "colour_hidden.json").write_text(json.dumps(results["colour_hidden"], indent=1))

    def stored(prefix: str = "", names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Rows in bench/results/rows/ made with this script's current config (others are stale)."""
        found = {}
        attributes = COLOUR_ATTRIBUTES if prefix else ATTRIBUTES
        for n in names or ["tfidf_lr", *ROWS, *finetune_rows(args.out, missing_ok=True)]:
            p = args.out / "rows" / f"{prefix}{n}.json"
            if not p.is_file():
                continue
            row = json.loads(p.read_text())
            current = TFIDF_CONFIG if n == "tfidf_lr" else row_config(n, attributes).model_dump(mode="json")
            if row.get("config") == current:
                found[n] = row
        return found

    if args.jobs > 1:
        t0 = time.perf_counter()
        datasets = ["--dataset", str(ds.path)] + (["--colour-dataset", str(ds_ch.path)] if ds_ch is not None else [])
        run_lanes(lane_jobs(args, names, colour_rows, datasets), args.jobs)
        timing["rows (%d processes)" % args.jobs] = time.perf_counter() - t0
    else:
        if not args.skip_tfidf:
                _run_row(args.out, "tfidf_lr", TFIDF_CONFIG, lambda: tfidf_row(ds, labels, home / TFIDF_PROBS), args.reuse)
        out_root = home / "bench" / "quality"
        for name in names:
            cfg = row_config(name)
            _run_row(args.out, name, cfg.model_dump(mode="json"), lambda: attrflow_row(name, cfg, ds, out_root, labels), args.reuse)
        if colour_rows:
            labels_ch = {k: v.numpy() for k, v in encode_labels(ds_ch.items, {a: ds_ch.vocab[a] for a in ATTRIBUTES}).items()}
            best_ma = best_lambda(stored(names=[n for n in ROWS if n.startswith("modality_attention_l")])) or "modality_attention_l0"
            for name in colour_rows:
                src = best_ma if name == "modality_attention" else name
                cfg = row_config(src, COLOUR_ATTRIBUTES)
                _run_row(args.out, f"colour_hidden-{src}", cfg.model_dump(mode="json"),
                         lambda: attrflow_row(src, cfg, ds_ch, home / "bench" / "quality-colour-hidden", labels_ch, masked=hidden), args.reuse)

    if args.seeds:  # the run-to-run table: every stored seeded row (and its seed-0 row) against TF-IDF+LR
        rows, seeded = stored(), stored(names=[p.stem for p in sorted((args.out / "rows").glob("*@seed*.json"))])
        if "tfidf_lr" not in rows:
            raise SystemExit("--seeds: the run-to-run table compares with the TF-IDF+LR row; run without --skip-tfidf")
        spread = seed_spread(rows, seeded)
        (args.out / "seeds.json").write_text(json.dumps({"environment": results["environment"], "rows": spread}, indent=1))
        (args.out / "seeds.md").write_text(seeds_markdown(spread, rows["tfidf_lr"]))
        log(f"run-to-run table -> {args.out / 'seeds.md'}")
    if args.no_report:
        log(f"rows done in {time.perf_counter() - t_all:.0f}s (no report)")
        return

    # The report covers every row stored so far (this run's and earlier runs').
    results["rows"] = stored()
    best_ma = best_lambda(results["rows"])
    ch_rows = {n: r for n, r in stored("colour_hidden-").items() if not n.startswith("modality_attention_l") or n == best_ma}
    if ch_rows and (args.out / "rows" / "colour_hidden.json").is_file():
        results["colour_hidden"] = {**json.loads((args.out / "rows" / "colour_hidden.json").read_text()), "rows": ch_rows}
    attrflow_rows = [n for n in results["rows"] if n in ROWS]
    if len(attrflow_rows) > 1:
        t0 = time.perf_counter()
        results["rows"][ENSEMBLE] = ensemble_row(results["rows"], ds, labels, home / "bench" / "quality" / ENSEMBLE)
        timing["ensemble"] = time.perf_counter() - t0
        attrflow_rows.append(ENSEMBLE)
    results["best"] = best_on_validation(results["rows"], attrflow_rows)
    best_dir = Path(results["rows"][results["best"]]["model_dir"])
    log(f"best (validation macro-F1): {results['best']}")
    ma_dirs = {n: Path(results["rows"][n]["model_dir"]) for n in results["rows"] if n.startswith("modality_attention_l")}
    if ma_dirs:
        plot_weights_of(ma_dirs, ds, args.out / "modality_weights.png")
    plot_pr(best_dir, ds, args.out / "pr_curves_best.png")
    export = home / "bench" / "fashion-best"
    shutil.rmtree(export, ignore_errors=True)
    shutil.copytree(best_dir, export, ignore=shutil.ignore_patterns("checkpoint", "eval-*"))
    results["export"] = str(export)
    results["registry"] = register_best(export, results["rows"][results["best"]]["attributes"], ds, results["best"])
    log(f"registry: {results['registry']}")

    results["timing"] = timing
    previous = args.out / "quality.json"
    if args.rows == "none" and args.finetune and previous.is_file():
        # A run of the fine-tuning rows alone (make bench-finetune) keeps the frozen run's timing.
        results["timing"] = json.loads(previous.read_text()).get("timing", {})
        results["timing_finetune"] = timing
    if cache_record.is_file():
        results["embedding_cache_computed"] = json.loads(cache_record.read_text())
    results["row_seconds"] = {n: r.get("wall_seconds", r.get("train_seconds")) for n, r in results["rows"].items()}
    if ch_rows:
        results["row_seconds"].update({f"colour_hidden-{n}": r.get("wall_seconds", r.get("train_seconds")) for n, r in ch_rows.items()})
    if "tfidf_lr" in results["rows"]:
        rows = results["rows"]
        probs = {n: row_probs(Path(rows[n]["model_dir"]), ds)["test"] for n in {results["best"], *best_single_and_multimodal(rows)} if n}
        if (home / TFIDF_PROBS).is_file():
            probs["tfidf_lr"] = dict(np.load(home / TFIDF_PROBS))
        te = ds.items["split"].to_numpy() == "test"
        log("targets: paired bootstrap over test products")
        results["targets"] = check_targets(results, probs, {a: labels[a][te] for a in ATTRIBUTES})
    timing["this run"] = time.perf_counter() - t_all  # everything, the bootstrap included
    (args.out / "quality.json").write_text(json.dumps(results, indent=1, default=float))
    (args.out / "quality.md").write_text(markdown(results))
    log(f"done in {timing['this run']:.0f}s -> {args.out / 'quality.md'}")
    print(markdown(results))


# --- running rows side by side -----------------------------------------------------------------------

# Longest first, so the lanes finish together (rough seconds per row in a lane on the 2-core reference machine).
_ROW_COST = {"finetune-modality_attention": 490, "finetune-concat": 480, "finetune-image": 380, "finetune-text": 200,
             "cross_attention": 430, "modality_attention": 280, "late": 280, "concat": 250, "image": 215, "tfidf_lr": 150, "text": 65}


@dataclass
class LaneJob:
    name: str
    command: list[str]
    after: set[str] = field(default_factory=set)  # jobs that must finish first


def lane_jobs(args: argparse.Namespace, names: list[str], colour_rows: list[str], datasets: list[str]) -> list[LaneJob]:
    """One child process of this script per row: `--jobs 1 --threads 1 --no-report`, given the
    ingested dataset folders (`datasets`: --dataset DIR [--colour-dataset DIR])."""
    base = [sys.executable, str(Path(__file__).resolve()), "--jobs", "1", "--threads", "1", "--no-report",
            "--out", str(args.out), *datasets]
    if args.reuse:
        base.append("--reuse")
    jobs = [LaneJob(n, [*base, "--rows", n, "--skip-tfidf", "--skip-colour-hidden"]) for n in names]
    if not args.skip_tfidf:
        jobs.append(LaneJob("tfidf_lr", [*base, "--rows", "none", "--skip-colour-hidden"]))
    jobs.sort(key=lambda j: -next((c for k, c in _ROW_COST.items() if j.name.startswith(k)), 300))
    lambdas = {n for n in names if n.startswith("modality_attention_l")}
    for n in colour_rows:  # the colour-hidden modality_attention row takes the best lambda: after those rows
        jobs.append(LaneJob(f"colour_hidden-{n}", [*base, "--rows", "none", "--skip-tfidf", "--colour-rows", n],
                            after=lambdas if n == "modality_attention" else set()))
    return jobs


def run_lanes(jobs: list[LaneJob], lanes: int, poll_s: float = 2.0) -> None:
    """Run the jobs, at most `lanes` at a time, each once its `after` jobs are done (they write
    bench/results/rows/; their output goes to this console). A failed job stops the others and
    fails the run."""
    if len({j.name for j in jobs}) != len(jobs):
        raise ValueError(f"duplicate job names in {[j.name for j in jobs]}")
    pending, running, done = list(jobs), {}, set()
    try:
        while pending or running:
            for job in [j for j in pending if j.after <= done][: lanes - len(running)]:
                log(f"start {job.name}")
                running[job.name] = (job, subprocess.Popen(job.command), time.perf_counter())
                pending.remove(job)
            if not running:
                raise ValueError(f"jobs waiting for jobs that never run: {[(j.name, sorted(j.after - done)) for j in pending]}")
            time.sleep(poll_s)
            for name, (job, proc, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                if proc.returncode != 0:
                    raise SystemExit(f"row {name} failed (exit {proc.returncode}): {' '.join(job.command)}")
                done.add(name)
                log(f"finished {name} in {time.perf_counter() - started:.0f}s")
    finally:
        for _, proc, _ in running.values():  # on failure or interrupt: no orphans left writing rows
            proc.terminate()
        for _, proc, _ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _hidden_ids(spec_path: Path) -> tuple[list[str], list[bool]]:
    with (spec_path.parent / "styles.csv").open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        pairs = [(r["id"], r["colour_hidden"] == "1") for r in reader]
    return [p[0] for p in pairs], [p[1] for p in pairs]


if __name__ == "__main__":
    main()
