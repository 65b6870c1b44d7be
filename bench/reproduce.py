"""Do the shipped configs reproduce the quality benchmark's rows? `attrflow train` as a user runs it.

    make bench-reproduce         # ~20 minutes on 2 cores (after make bench-quality: its embedding cache)

The real CLI, in subprocesses: `attrflow ingest configs/catalogs/fashion.yaml`, then for each shipped
config (`configs/models/concat.yaml`, `configs/models/modality_attention.yaml`) `attrflow train` and
`attrflow evaluate --split test`. Each attribute's test macro-F1 and R@P95 beside the benchmark
row it should reproduce (bench/results/rows/<row>.json) and that row's run-to-run spread over
training seeds (bench/results/seeds.json: min and max over seeds 0, 1, 2). Reproduced: every value
within the seeds' range widened by one standard deviation. The shipped configs train every
attribute of the catalog (7); the rows train the benchmark's 5 (one early-stopping score over
them), so each config is also trained with `model.attributes` set to those 5 (its only change).
Writes bench/results/reproduce.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import ATTRIBUTES, RESULTS, SPEC, log  # noqa: E402
from bench.compare import run_record  # noqa: E402
from components.settings import get_settings  # noqa: E402

SHIPPED = {"concat": "concat", "modality_attention": "modality_attention_l0.01"}  # config -> benchmark row
METRICS = ("f1_macro", "r_at_p95")


def cli(*args: str) -> dict[str, Any]:
    """Run `attrflow ARGS --json` and return its last line, parsed."""
    attrflow = Path(sys.executable).with_name("attrflow")
    done = subprocess.run([str(attrflow), *args, "--json"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"attrflow {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(row: str) -> dict[str, dict[str, dict[str, float]]] | None:
    """metric -> attribute -> {min, max, std} over the row's training seeds (None: no seed run)."""
    path = RESULTS / "seeds.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else {}
    if row not in rows:
        return None
    return {
        m: {a: {"min": min(v["values"]), "max": max(v["values"]), "std": v["std"]} for a, v in rows[row][m].items()}
        for m in METRICS
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reuse", action="store_true", help="evaluate models an earlier run trained (same folders)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    work = get_settings().home.resolve() / "bench" / "reproduce"
    dataset = cli("ingest", str(SPEC))["dataset_dir"]
    results: dict[str, Any] = {**run_record("reproduce.py"), "configs": {}}
    for config, row in SHIPPED.items():
        shipped = ROOT / "configs" / "models" / f"{config}.yaml"
        # As shipped (every attribute of the catalog), and with the benchmark's five attributes only.
        narrowed = work / f"{config}-5.yaml"
        narrowed.parent.mkdir(parents=True, exist_ok=True)
        raw = yaml.safe_load(shipped.read_text())
        raw["model"]["attributes"] = ATTRIBUTES
        narrowed.write_text(yaml.safe_dump(raw))
        for name, path in ((config, shipped), (f"{config} (5 attributes)", narrowed)):
            folder = work / name.replace(" ", "_").replace("(", "").replace(")", "")
            t0 = time.perf_counter()
            if not (args.reuse and (folder / "model.safetensors").is_file()):
                cli("train", str(path), "--dataset", dataset, "--out", str(folder))
            seconds = time.perf_counter() - t0
            test = cli("evaluate", str(folder), "--dataset", dataset)["attributes"]
            results["configs"][name] = {"row": row, "train_seconds": seconds, "attributes": compared(test, row)}
            log(
                f"{name}: "
                + " ".join(
                    f"{a} {v['f1_macro']['train']:.3f}/{v['f1_macro']['row']:.3f}"
                    for a, v in results["configs"][name]["attributes"].items()
                )
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reproduce.json").write_text(json.dumps(results, indent=1))
    (args.out / "reproduce.md").write_text(markdown(results))
    print(markdown(results))


def compared(test: dict[str, Any], row: str) -> dict[str, Any]:
    """Per attribute and metric: this run's test value, the benchmark row's, and its seeds' range."""
    bench_row = json.loads((RESULTS / "rows" / f"{row}.json").read_text())["attributes"]
    sp = spread(row)
    attributes = {}
    for a in ATTRIBUTES:
        entry: dict[str, Any] = {}
        for m in METRICS:
            got, want = float(test[a][m]), float(bench_row[a][m])
            rng = sp[m][a] if sp else None
            entry[m] = {
                "train": got,
                "row": want,
                "seeds": rng,
                # within the seeds' range widened by one standard deviation, or above / below it
                "within": None
                if rng is None
                else "below"
                if got < rng["min"] - rng["std"]
                else "above"
                if got > rng["max"] + rng["std"]
                else "within",
            }
        attributes[a] = entry
    return attributes


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# The shipped configs through `attrflow train` vs the quality benchmark's rows (fashion, test)",
        "",
        f"{r['date']}, {r['machine']}. Command: `{r['command']}`. Seeds: the row's range over training seeds "
        "0-2 (bench/results/seeds.json); reproduced = within that range widened by one standard deviation "
        "(above / **below**: outside it, on either metric).",
        "",
        "| config (row) | attribute | train macro-F1 | row | seeds | train R@P95 | row | seeds | reproduced |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for config, c in r["configs"].items():
        for a, v in c["attributes"].items():
            cells = []
            for m in METRICS:
                s = v[m]["seeds"]
                cells.append(
                    f"{v[m]['train']:.3f} | {v[m]['row']:.3f} | " + (f"{s['min']:.3f}-{s['max']:.3f}" if s else "-")
                )
            within = [v[m]["within"] for m in METRICS]
            verdict = (
                "-"
                if None in within
                else "yes"
                if all(w == "within" for w in within)
                else "**below**"
                if "below" in within
                else "above"
            )
            lines.append(f"| {config} ({c['row']}) | {a} | {' | '.join(cells)} | {verdict} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
