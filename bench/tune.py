"""Search benchmark: how many frozen-mode trials finish in 10 minutes on the fashion catalog, and
does the best tuned configuration beat the quality benchmark's best hand-picked row on test?

    make bench-tune        # after make bench-quality (it reuses that run's embedding cache)

Runs the real `tune` flow (Ray Tune + Optuna + ASHA, every trial in the registry, the best
registered as `fashion` through the promotion rule) with configs/search/fashion.yaml, then
writes bench/results/tune.json and bench/results/tune.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

ATTRIBUTES = ["articleType", "baseColour", "gender", "season", "usage"]
RESULTS = ROOT / "bench" / "results"


def test_summary(metrics: dict) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Means over the five attributes and per-attribute values of the register flow's test metrics
    (`flows.register.summarize`: {"attributes": {name: {metric: value}}, ...})."""
    per = {a: {m: float(metrics["attributes"][a][m]) for m in ("r_at_p95", "f1_macro")} for a in ATTRIBUTES}
    return {m: float(np.mean([per[a][m] for a in ATTRIBUTES])) for m in ("r_at_p95", "f1_macro")}, per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default=str(ROOT / "configs" / "catalogs" / "fashion.yaml"))
    ap.add_argument("--search", default=str(ROOT / "configs" / "search" / "fashion.yaml"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import ray
    from prefect import __version__ as prefect_version

    from components.tuning import load_search
    from flows.tune import tune_flow

    spec = load_search(args.search)
    start = time.perf_counter()
    result = tune_flow(args.spec, args.search, model_name="fashion")
    wall = time.perf_counter() - start
    trials = result["trials"]
    # Ended: trained to its last epoch, or stopped by ASHA; not cut by the budget, not failed.
    ended = [t for t in trials if t["status"] == "completed" and not t["interrupted"]]
    per_fusion: dict[str, dict] = {}
    for t in trials:
        f = per_fusion.setdefault(t["params"]["fusion"], {"trials": 0, "best_validation": None})
        f["trials"] += 1
        if t.get("best") is not None:
            f["best_validation"] = max(f["best_validation"] or 0.0, t["best"])
    tuned, tuned_per_attribute = test_summary(result["metrics"])

    quality_path = args.out / "quality.json"
    comparison = None
    if quality_path.is_file():
        quality = json.loads(quality_path.read_text())
        best = quality["rows"][quality["best"]]["attributes"]
        hand = {m: float(np.mean([best[a][m] for a in ATTRIBUTES])) for m in ("r_at_p95", "f1_macro")}
        comparison = {
            "hand_picked_row": quality["best"],
            "hand_picked_test": hand,
            "tuned_test": tuned,
            "tuned_minus_hand_picked": {m: tuned[m] - hand[m] for m in tuned},
            "tuned_beats_hand_picked_on_r_at_p95": tuned["r_at_p95"] > hand["r_at_p95"],
        }
    out = {
        "what": "frozen-mode search (Ray Tune + Optuna + ASHA) through the `tune` flow on the fashion catalog: "
        "trials that ended (trained to their last epoch, or stopped by ASHA after >= 1 full epoch on all "
        "training rows + validation) within the search file's time budget",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count()},
        "versions": {"ray": ray.__version__, "prefect": prefect_version},
        "search": os.path.relpath(args.search, ROOT),
        "budget_s": spec.time_budget_s,
        "flow_wall_seconds": wall,
        "trials_started": len(trials),
        "trials_ended": len(ended),
        "counts": result["counts"],
        "per_fusion": per_fusion,
        "best_trial": result["best_trial"],
        "registered": result["registered"],
        "tuned_test": tuned,
        "tuned_test_per_attribute": tuned_per_attribute,
        "comparison_with_quality_benchmark": comparison,
        "target": ">= 60 trials ended in 10 minutes",
        "met": len(ended) >= 60,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps(out, indent=1, default=float))
    lines = [
        "# Search benchmark (frozen mode, fashion catalog)",
        "",
        f"{out['date']} · {os.cpu_count()} cores · ray {ray.__version__} · `{out['search']}`",
        "",
        f"- trials ended within {spec.time_budget_s:.0f} s: **{len(ended)}** (target 60; {result['counts']})",
        f"- best trial: {result['best_trial']}",
        f"- tuned model on test: R@P95 mean {tuned['r_at_p95']:.4f}, macro-F1 mean {tuned['f1_macro']:.4f}",
    ]
    if comparison:
        d = comparison["tuned_minus_hand_picked"]
        lines.append(
            f"- best hand-picked row `{comparison['hand_picked_row']}` on test: R@P95 mean "
            f"{comparison['hand_picked_test']['r_at_p95']:.4f}, macro-F1 mean {comparison['hand_picked_test']['f1_macro']:.4f}"
            f" (tuned minus hand-picked: R@P95 {d['r_at_p95']:+.4f}, macro-F1 {d['f1_macro']:+.4f})"
        )
    lines.append(f"- registered: {result['registered']}")
    (args.out / "tune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
