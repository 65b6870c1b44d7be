"""Value extraction on the fashion catalog: distant labels, M-JAVE's visual gates, image awareness.

    make bench-extraction                             # runs this after the AE-110k / OA-Mine tables
    .venv/bin/python bench/extraction_fashion.py      # ~35 minutes on 2 cores (8,000 train products; after make bench-quality)

Distant labels (components.catalog.spans.spans_from_attributes): each product's labelled
articleType, baseColour, gender and usage located in its title (case-insensitive, word
boundaries, longest match first); a value not written in the title is "no span" (the expected
value is then none: there is nothing to extract). Expected values are the title's own text at the
located span, scored by the benchmarks' counting rule (NN/NV/VN/VC/VW, micro over all).

Rows, all on the quality benchmark's frozen encoders through its embedding cache (MiniLM token
vectors, EfficientNet-Lite0 pooled vector and 12 regions per image): the dictionary baseline;
the tagger (frozen text encoder + one trained transformer layer, text only); + the global visual
gate; + both gates (M-JAVE); with --rows, the regional gate alone and both gates with ULS-DRAM's
text-guided region selection (4 of the 12 regions). Image awareness: each gated row evaluated again with
every test product's image swapped for another product's (a fixed derangement); the drop in value
F1 is how much the row uses the image. Low-resource curve: the tagger and the gated row on 10%, 20% and
50% of the train products. Writes bench/results/extraction_fashion.{json,md}.
"""

from __future__ import annotations

import argparse
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
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from bench.cache import encoders  # noqa: E402
from bench.common import RESULTS, SPEC, log  # noqa: E402
from bench.compare import run_record  # noqa: E402
from bench.extraction import dictionary_row  # noqa: E402
from components.catalog import ingest, load_dataset, load_spec  # noqa: E402
from components.catalog.spans import SpanRow, distant_rows  # noqa: E402
from components.evaluation.extraction import score_rows  # noqa: E402
from components.features.cache import cache_path, cached_encodings  # noqa: E402
from components.models.tagger import ExtractionConfig  # noqa: E402
from components.training.extraction import ExtractionTrainConfig, ExtractionTrainingConfig, train_extractor  # noqa: E402

ATTRIBUTES = ["articleType", "baseColour", "gender", "usage"]
CATEGORY = "fashion"  # one attribute set for every product
GATES = {
    "tagger": {},
    "tagger+global gate": {"global_visual_gate": True},
    "tagger+regional gate": {"regional_visual_gate": True},
    "tagger+both gates (M-JAVE)": {"global_visual_gate": True, "regional_visual_gate": True},
    # ULS-DRAM's text-guided region selection: tokens attend to the 4 of 12 regions the title picks
    "tagger+both gates+region selection": {"global_visual_gate": True, "regional_visual_gate": True, "region_top_k": 4},
}


def gated_row(model, test: list[SpanRow], feats: dict[str, torch.Tensor]) -> dict:
    return score_rows(model, test, feats)["report"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument(
        "--train-products",
        type=int,
        default=8000,
        help="a seeded sample of the train split (0 = all 32k: ~2 h on 2 cores)",
    )
    # The regional gate alone is left out by default (CPU time): + both gates minus + global shows it.
    ap.add_argument("--rows", default="tagger,tagger+global gate,tagger+both gates (M-JAVE)")
    ap.add_argument(
        "--fractions", default="0.1,0.2,0.5", help="shares of the train products for the low-resource curve"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    start = time.perf_counter()
    ds = load_dataset(ingest(load_spec(SPEC)).dataset_dir)
    text_enc, image_enc = encoders()
    path = cache_path(ds, text_enc, image_enc, True)
    if not path.is_file():
        cached_encodings(ds, text_enc, image_enc, with_tokens=True, batch_size=128)
    cache = load_file(str(path))
    split = ds.items["split"].to_numpy()
    tr, te = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    if args.train_products:
        tr = np.sort(np.random.default_rng(0).choice(tr, size=min(args.train_products, len(tr)), replace=False))
    rows = distant_rows(ds.items, ATTRIBUTES, CATEGORY)
    train, test = [rows[i] for i in tr], [rows[i] for i in te]
    keys = ("text", "text_tokens", "image", "image_tokens", "has_image")
    feats_tr = {k: cache[k][torch.from_numpy(tr)] for k in keys}
    feats_te = {k: cache[k][torch.from_numpy(te)] for k in keys}
    # Image awareness: every test product gets another's image (a shift by half the split: a derangement).
    swap = torch.roll(torch.arange(len(te)), len(te) // 2)
    feats_swapped = {**feats_te, **{k: feats_te[k][swap] for k in ("image", "image_tokens", "has_image")}}
    located = {a: float(np.mean([bool(r.values[a]) for r in test])) for a in ATTRIBUTES}
    log(f"fashion: train {len(train)}, test {len(test)}; share of test titles holding the value: {located}")

    results = {
        **run_record("extraction_fashion.py"),
        "epochs": args.epochs,
        "train_products": len(train),
        "test_products": len(test),
        "located_share_test": located,
        "rows": {"dictionary": dictionary_row(train, test, {CATEGORY: ATTRIBUTES})},
    }
    log(f"dictionary: F1 {results['rows']['dictionary']['micro']['f1']:.4f}")
    text_keys = ("text", "text_tokens")

    def run(name: str, index: np.ndarray) -> tuple[Any, dict]:
        """Train row `name` on the train products `index` (positions in `train`), score it on test."""
        gates = GATES[name]
        cfg = ExtractionTrainConfig(
            model=ExtractionConfig(
                text={**text_enc.config.model_dump()},
                category_input=False,  # the cache's token vectors are the title's alone
                frozen_text=True,
                context_layers=1,
                image=image_enc.config if gates else None,
                **gates,
            ),
            training=ExtractionTrainingConfig(epochs=args.epochs, batch_size=64, lr_head=1e-3, warmup_share=0.05),
        )
        keys = list(feats_tr) if gates else text_keys
        t0 = time.perf_counter()
        torch.manual_seed(0)
        sub = torch.from_numpy(index)
        model = train_extractor(
            cfg,
            [train[i] for i in index],
            ATTRIBUTES,
            log=lambda m: log(f"{name} ({len(index)}) {m}"),
            features={k: feats_tr[k][sub] for k in keys},
        )
        row = gated_row(model, test, {k: feats_te[k] for k in keys})
        row["train_seconds"] = time.perf_counter() - t0
        return model, row

    everything = np.arange(len(train))
    for name in args.rows.split(","):
        model, row = run(name, everything)
        if GATES[name]:
            row["images_swapped"] = gated_row(model, test, feats_swapped)
        results["rows"][name] = row
        log(
            f"{name}: F1 {row['micro']['f1']:.4f}"
            + (f", images swapped {row['images_swapped']['micro']['f1']:.4f}" if GATES[name] else "")
        )
    # Low-resource curve (M-JAVE): the text-only tagger and the gated one on seeded shares of train.
    results["low_resource"] = {}
    for share in [float(x) for x in args.fractions.split(",") if x]:
        index = np.sort(np.random.default_rng(1).choice(everything, size=int(share * len(train)), replace=False))
        for name in ("tagger", "tagger+both gates (M-JAVE)"):
            _, row = run(name, index)
            results["low_resource"].setdefault(name, {})[str(share)] = row["micro"]["f1"]
            log(f"low-resource {share:.0%} {name}: F1 {row['micro']['f1']:.4f}")
    for name in ("tagger", "tagger+both gates (M-JAVE)"):
        if name in results["rows"] and name in results["low_resource"]:
            results["low_resource"][name]["1.0"] = results["rows"][name]["micro"]["f1"]
    results["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "extraction_fashion.json").write_text(json.dumps(results, indent=1))
    (args.out / "extraction_fashion.md").write_text(markdown(results))
    print(markdown(results))


def markdown(r: dict) -> str:
    lines = [
        "# Value extraction on fashion: distant labels, visual gates, image awareness",
        "",
        f"{r['date']}, {r['machine']}. Command: `{r['command']}`. Train {r['train_products']} products "
        f"({r['epochs']} epochs), test {r['test_products']}. Share of test titles that hold the labelled value: "
        + ", ".join(f"{a} {v:.0%}" for a, v in r["located_share_test"].items())
        + ".",
        "",
        "| row | micro P | micro R | micro F1 | span F1 | value R@P95 | NN / NV / VN / VC / VW "
        "| F1, images swapped | drop | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in r["rows"].items():
        m = row["micro"]
        sw = row.get("images_swapped")
        lines.append(
            f"| {name} | {100 * m['precision']:.2f} | {100 * m['recall']:.2f} | {100 * m['f1']:.2f} | "
            f"{100 * row['span_f1']:.2f} | {100 * row['value_r_at_p95']:.2f} | "
            f"{' / '.join(str(m[o]) for o in ('NN', 'NV', 'VN', 'VC', 'VW'))} | "
            + (f"{100 * sw['micro']['f1']:.2f} | {100 * (m['f1'] - sw['micro']['f1']):+.2f}" if sw else "- | -")
            + f" | {row.get('train_seconds', 0):.0f} |"
        )
    if r.get("low_resource"):
        shares = sorted({float(k) for v in r["low_resource"].values() for k in v})
        lines += [
            "",
            f"Low-resource curve: value F1 with a share of the {r['train_products']} train products (seeded samples):",
            "",
            "| row | " + " | ".join(f"{s:.0%}" for s in shares) + " |",
            "|---" * (len(shares) + 1) + "|",
        ]
        for name, curve in r["low_resource"].items():
            lines.append(
                f"| {name} | "
                + " | ".join(f"{100 * curve[str(s)]:.2f}" if str(s) in curve else "-" for s in shares)
                + " |"
            )
    per = [n for n in r["rows"] if n != "dictionary"]
    lines += [
        "",
        "Value F1 per attribute:",
        "",
        "| row | " + " | ".join(ATTRIBUTES) + " |",
        "|---" * (len(ATTRIBUTES) + 1) + "|",
    ]
    for name in ["dictionary", *per]:
        pa = r["rows"][name]["per_attribute"]
        lines.append(
            f"| {name} | " + " | ".join(f"{100 * pa[a]['f1']:.2f}" if a in pa else "-" for a in ATTRIBUTES) + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
