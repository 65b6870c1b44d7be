"""Train one quality-benchmark row with changed settings, for trying a model change.

    .venv/bin/python bench/variant.py concat_ls01 concat training.label_smoothing=0.1
    .venv/bin/python bench/variant.py concat_wide_dropout concat 'model.lexical={"buckets": 131072, "dim": 64, "dropout": 0.25}'

Uses the quality benchmark's row (its config in bench/rows.py, the fashion dataset it ingested
and its embedding cache: run `make bench-quality` first), applies each `section.key=JSON`
override, trains it and writes bench/results/variants/NAME.json with the validation and test
metrics, the difference to TF-IDF+LR per attribute, and the config. The model goes to
ATTRFLOW_HOME/bench/variants/NAME.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: `bench` is the package

import numpy as np  # noqa: E402

from bench.common import ATTRIBUTES, RESULTS, SPEC  # noqa: E402  (bench sets the offline flags first)
from bench.rows import ROWS, row_config  # noqa: E402
from bench.stored import strip_private  # noqa: E402
from bench.training import attrflow_row  # noqa: E402
from components.catalog import ingest, load_dataset, load_spec  # noqa: E402
from components.features.preprocess import encode_labels  # noqa: E402
from components.settings import get_settings  # noqa: E402
from components.training.trainer import TrainConfig  # noqa: E402


def with_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """`section.key=JSON` (section: model or training), validated as a whole config."""
    data = cfg.model_dump(mode="json")
    for item in overrides:
        key, sep, value = item.partition("=")
        section, _, field = key.partition(".")
        if not sep or section not in data or not field:
            raise SystemExit(f"override {item!r}: expected model.KEY=JSON or training.KEY=JSON")
        data[section][field] = json.loads(value)
    return TrainConfig.model_validate(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="the variant's name (output file and model folder)")
    ap.add_argument("row", help="the benchmark row it starts from: " + ",".join(ROWS))
    ap.add_argument("overrides", nargs="*", help="section.key=JSON, e.g. training.seed=1")
    args = ap.parse_args()
    cfg = with_overrides(row_config(args.row), args.overrides)
    bar = json.loads((RESULTS / "rows" / "tfidf_lr.json").read_text())[
        "attributes"
    ]  # fails early without a quality run
    ds = load_dataset(ingest(load_spec(SPEC)).dataset_dir)
    labels = {k: v.numpy() for k, v in encode_labels(ds.items, {a: ds.vocab[a] for a in ATTRIBUTES}).items()}
    row = strip_private(attrflow_row(args.name, cfg, ds, get_settings().home.resolve() / "bench" / "variants", labels))
    row.update(
        row=args.row,
        overrides=args.overrides,
        vs_tfidf={m: {a: row["attributes"][a][m] - bar[a][m] for a in ATTRIBUTES} for m in ("f1_macro", "r_at_p95")},
    )
    out = RESULTS / "variants" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1, default=float))
    print(
        f"{args.name}: validation macro-F1 {row['validation_f1_macro']:.4f} (best epoch {row['best_epoch']}) -> {out}"
    )
    for m, d in row["vs_tfidf"].items():
        print(
            f"  {m} test minus TF-IDF+LR: "
            + " ".join(f"{a} {v:+.3f}" for a, v in d.items())
            + f" (mean {np.mean([row['attributes'][a][m] for a in ATTRIBUTES]):.3f})"
        )


if __name__ == "__main__":
    main()
