"""The benchmark scripts' own machinery (bench/quality.py and its modules in bench/, bench/tune.py):
running rows side by side, the paired bootstrap behind the target checks, and reading the register
flow's metrics. The benchmarks themselves need the fashion catalog and run in `make bench`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `bench` is a package at the repository root, not an installed one

from bench.bootstrap import paired_bootstrap  # noqa: E402
from bench.common import ATTRIBUTES, METRICS  # noqa: E402
from bench.lanes import LaneJob, lane_jobs, run_lanes  # noqa: E402
from bench.rows import FINETUNE, TRAINING, row_config  # noqa: E402
from bench.seeds import seed_spread, seeds_markdown  # noqa: E402
from bench.selection import finetune_rows  # noqa: E402


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


quality = _load("quality")  # the entry point: argument parsing and orchestration


def _job(name: str, log, seconds: float = 0.3, code: int = 0, after=()):
    script = (
        f"import time; open({str(log)!r}, 'a').write('start {name} %f\\n' % time.time()); time.sleep({seconds}); "
        f"open({str(log)!r}, 'a').write('end {name} %f\\n' % time.time()); raise SystemExit({code})"
    )
    return LaneJob(name, [sys.executable, "-c", script], set(after))


def _events(log) -> list[tuple[str, str, float]]:
    return [(kind, name, float(t)) for kind, name, t in (line.split() for line in log.read_text().splitlines())]


def test_lanes_run_side_by_side_and_respect_dependencies(tmp_path):
    log = tmp_path / "log"
    jobs = [_job("a", log), _job("b", log), _job("c", log), _job("last", log, after={"a", "b", "c"})]
    run_lanes(jobs, lanes=2, poll_s=0.05)
    events = _events(log)
    running, most = 0, 0
    for kind, _, _ in sorted(events, key=lambda e: e[2]):
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == 2  # two at a time, never three
    ends = {n: t for k, n, t in events if k == "end"}
    start_last = next(t for k, n, t in events if k == "start" and n == "last")
    assert start_last >= max(ends["a"], ends["b"], ends["c"])


def test_a_failed_lane_job_fails_the_run_and_stops_the_others(tmp_path):
    log = tmp_path / "log"
    jobs = [_job("slow", log, seconds=30), _job("broken", log, code=3), _job("never", log, after={"broken"})]
    start = time.perf_counter()
    with pytest.raises(SystemExit, match="row broken failed \\(exit 3\\)"):
        run_lanes(jobs, lanes=2, poll_s=0.05)
    assert time.perf_counter() - start < 20  # "slow" was terminated, not waited for
    names = {n for _, n, _ in _events(log)}
    assert "never" not in names and ("end", "slow") not in {(k, n) for k, n, _ in _events(log)}
    with pytest.raises(ValueError, match="never run"):
        run_lanes([_job("orphan", log, after={"missing"})], lanes=2, poll_s=0.05)


def test_lane_jobs_rerun_the_entry_point_with_flags_it_accepts():
    args = quality.parse_args(["--rows", "text", "--reuse", "--out", "OUT"])
    jobs = lane_jobs(args, ["text", "modality_attention_l0"], ["text", "modality_attention"], ["--dataset", "DS"])
    assert [j.name for j in jobs] == [
        "modality_attention_l0",
        "tfidf_lr",
        "text",
        "colour_hidden-text",
        "colour_hidden-modality_attention",
    ]
    assert jobs[-1].after == {"modality_attention_l0"} and not jobs[-2].after
    for job in jobs:
        assert job.command[:2] == [sys.executable, str(REPO / "bench" / "quality.py")]
        lane = quality.parse_args(job.command[2:])
        assert (lane.jobs, lane.threads, lane.no_report, lane.reuse, str(lane.dataset)) == (1, 1, True, True, "DS")
    # The child process starts as a script (bench/ first on its sys.path) and finds the `bench` package.
    shown = subprocess.run([*jobs[0].command, "--help"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "--finetune" in shown.stdout and "--dataset" not in shown.stdout  # the lanes' own flags stay hidden


def test_paired_bootstrap_brackets_the_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    good = np.eye(4)[y] * 0.7 + 0.075  # always right, confident
    noisy = rng.dirichlet(np.ones(4), 600)  # right about a quarter of the time
    same = paired_bootstrap(good, good, y, n=100)
    assert same["f1_macro"] == [0.0, 0.0] and same["r_at_p95"] == [0.0, 0.0]
    better = paired_bootstrap(good, noisy, y, n=100)
    assert better["f1_macro"][0] > 0.5 and better["r_at_p95"][0] > 0.5
    worse = paired_bootstrap(noisy, good, y, n=100)
    assert worse["f1_macro"][1] < -0.5
    # Multilabel attributes too (thresholds at 0.5), rows with a missing label left out.
    y2 = (rng.random((600, 3)) < 0.4).astype(int)
    y2[:10] = -1
    sure = np.where(y2 == 1, 0.9, 0.1)
    ml = paired_bootstrap(sure, rng.random((600, 3)), y2, kind="multilabel", n=50)
    assert ml["f1_macro"][0] > 0.2


def test_targets_are_wins_or_non_inferiority_at_the_ceiling():
    """A win needs the interval above 0; at the ceiling, non-inferiority within the margin;
    an interval holding 0 elsewhere decides nothing, so the target is not met."""
    from bench.bootstrap import verdict, with_verdicts

    assert verdict([0.01, 0.05], bar=0.80) == "win"
    assert verdict([-0.004, 0.06], bar=0.80) == "tie"
    assert verdict([-0.004, 0.01], bar=0.99) == "non-inferior"
    assert verdict([-0.03, 0.01], bar=0.99) == "tie"
    assert verdict([-0.05, -0.01], bar=0.80) == "loss"
    rows = {
        r: {"attributes": {a: {"f1_macro": v} for a, v in vals.items()}}
        for r, vals in {
            "best": {"colour": 0.83, "gender": 0.99},
            "bar": {"colour": 0.80, "gender": 0.99},
        }.items()
    }
    target = {"a": "best", "b": "bar", "metric": "f1_macro", "diff": {"colour": 0.03, "gender": 0.0}}
    met = with_verdicts({**target, "ci95": {"colour": [0.01, 0.05], "gender": [-0.005, 0.004]}}, rows)
    assert met["met"] and met["verdicts"] == {"colour": "win", "gender": "non-inferior"}
    undecided = with_verdicts({**target, "ci95": {"colour": [-0.01, 0.07], "gender": [-0.005, 0.004]}}, rows)
    assert undecided["met"] is False and "tie" in undecided["detail"]
    assert with_verdicts(dict(target), rows)["met"] is None  # no intervals: not decided


def _row(seed: int, f1: dict[str, float]) -> dict:
    return {
        "config": {"training": {"seed": seed}},
        "validation_f1_macro": 0.8 + seed / 100,
        "train_seconds": 1,
        "items_per_second": 1,
        "attributes": {a: {**dict.fromkeys(METRICS, 0.5), "f1_macro": f1.get(a, 0.5)} for a in ATTRIBUTES},
    }


def test_a_seeded_row_is_its_row_with_another_training_seed():
    base, seeded = row_config("concat"), row_config("concat@seed3")
    assert (base.training.seed, seeded.training.seed) == (0, 3)
    assert seeded.model == base.model and seeded.training.model_copy(update={"seed": 0}) == base.training
    with pytest.raises(KeyError):
        row_config("no_such_row@seed1")


def test_a_finetune_row_fine_tunes_its_frozen_row_from_its_weights(tmp_path, attrflow_home):
    base, tuned = row_config("concat"), row_config("finetune-concat")
    assert tuned.model == base.model and base.training.frozen and not tuned.training.frozen
    assert tuned.training.init_from == (attrflow_home / "bench" / "quality" / "concat").resolve()
    assert tuned.training.max_steps == FINETUNE["max_steps"]
    # modality_attention: the lambda with the best validation score among the stored frozen rows.
    (tmp_path / "rows").mkdir()
    with pytest.raises(SystemExit, match="frozen modality_attention rows first"):
        finetune_rows(tmp_path)
    assert finetune_rows(tmp_path, missing_ok=True) == ["finetune-text", "finetune-image", "finetune-concat"]
    for lam, score in (("0", 0.80), ("0.1", 0.86), ("0.01", 0.84)):
        (tmp_path / "rows" / f"modality_attention_l{lam}.json").write_text(f'{{"validation_f1_macro": {score}}}')
    assert finetune_rows(tmp_path)[-1] == "finetune-modality_attention_l0.1"


def test_seed_spread_counts_the_seeds_that_beat_the_bar():
    rows = {"tfidf_lr": _row(0, {"gender": 0.90}), "concat": _row(0, {"gender": 0.95}), "text": _row(0, {})}
    seeded = {"concat@seed1": _row(1, {"gender": 0.85}), "concat@seed2": _row(2, {"gender": 0.92})}
    spread = seed_spread(rows, seeded)
    assert list(spread) == ["concat"]  # only rows that were trained with extra seeds
    g = spread["concat"]["f1_macro"]["gender"]
    assert spread["concat"]["seeds"] == [0, 1, 2] and g["values"] == [0.95, 0.85, 0.92]
    assert g["beats_tfidf"] == 2 and g["mean"] == pytest.approx(2.72 / 3)
    assert spread["concat"]["f1_macro"]["usage"]["beats_tfidf"] == 0  # a tie does not beat the bar
    table = seeds_markdown(spread, rows["tfidf_lr"])
    assert "| concat | 0,1,2 | 0.810 ± 0.008 |" in table and "0.907 ± 0.042 (2/3)" in table


def test_tune_bench_reads_the_register_flows_metrics():
    tune = _load("tune")
    from components.evaluation.report import AttributeReport, EvaluationReport
    from flows.register import summarize

    attrs = {}
    for k, a in enumerate(tune.ATTRIBUTES):
        attrs[a] = AttributeReport(
            kind="multiclass", n=10, accuracy=0.9, f1_micro=0.9, f1_macro=0.5 + k / 10, f1_weighted=0.9, r_at_p95=0.8
        )
    means, per = tune.test_summary(summarize(EvaluationReport(model="m", dataset="d", split="test", attributes=attrs)))
    assert means["f1_macro"] == pytest.approx(0.7) and means["r_at_p95"] == pytest.approx(0.8)
    assert per["usage"]["f1_macro"] == pytest.approx(0.9)


def test_variant_overrides_are_validated_as_a_whole_config():
    variant = _load("variant")
    cfg = variant.with_overrides(
        row_config("concat"), ["training.label_smoothing=0.1", 'model.head={"hidden": 32, "dropout": 0.0}']
    )
    assert cfg.training.label_smoothing == 0.1 and cfg.model.head.hidden == 32
    assert cfg.model.fusion.name == "concat" and cfg.training.epochs == TRAINING["epochs"]  # the rest is the row's
    with pytest.raises(SystemExit, match="expected model.KEY=JSON"):
        variant.with_overrides(cfg, ["label_smoothing=0.1"])
    with pytest.raises(ValueError, match="label_smoothing"):
        variant.with_overrides(cfg, ["training.label_smoothing=2"])  # out of range: pydantic refuses it


# --- the serving benchmark's pure helpers (bench/serving*.py) ---------------------------------------

_METRICS = """# HELP bentoml_service_adaptive_batch_size Adaptive batch size
# TYPE bentoml_service_adaptive_batch_size histogram
bentoml_service_adaptive_batch_size_bucket{le="1.0",method_name="score",worker_index="1"} {a1}
bentoml_service_adaptive_batch_size_bucket{le="2.0",method_name="score",worker_index="1"} {a2}
bentoml_service_adaptive_batch_size_bucket{le="4.0",method_name="score",worker_index="1"} {a4}
bentoml_service_adaptive_batch_size_bucket{le="+Inf",method_name="score",worker_index="1"} {a4}
bentoml_service_adaptive_batch_size_count{method_name="score",worker_index="1"} {a4}
bentoml_service_adaptive_batch_size_sum{method_name="score",worker_index="1"} {s}
bentoml_service_adaptive_batch_size_bucket{le="1.0",method_name="info",worker_index="1"} 50.0
bentoml_service_adaptive_batch_size_bucket{le="2.0",method_name="info",worker_index="1"} 50.0
bentoml_service_adaptive_batch_size_bucket{le="4.0",method_name="info",worker_index="1"} 50.0
bentoml_service_adaptive_batch_size_bucket{le="+Inf",method_name="info",worker_index="1"} 50.0
bentoml_service_adaptive_batch_size_count{method_name="info",worker_index="1"} 50.0
bentoml_service_adaptive_batch_size_sum{method_name="info",worker_index="1"} 50.0
# HELP attrflow_prediction_log_rows_total Prediction log rows written to Parquet
# TYPE attrflow_prediction_log_rows_total counter
attrflow_prediction_log_rows_total {rows}
"""


def _scrape(a1: int, a2: int, a4: int, s: float, rows: int) -> str:
    return (
        _METRICS.replace("{a1}", str(a1))
        .replace("{a2}", str(a2))
        .replace("{a4}", str(a4))
        .replace("{s}", str(s))
        .replace("{rows}", str(rows))
    )


def test_serving_bench_reads_the_batches_formed_off_metrics():
    from bench.serving_load import histogram, histogram_delta, total

    name, labels = "bentoml_service_adaptive_batch_size", {"method_name": "score"}
    before = histogram(_scrape(2, 2, 3, 6.0, 10), name, **labels)  # 2 calls of 1, 1 call of 4
    assert before["count"] == 3 and before["sum"] == 6 and before["buckets"][1.0] == 2
    after = histogram(_scrape(3, 8, 9, 17.0, 40), name, **labels)  # + 1 call of 1, 5 calls of 2: 11 items
    delta = histogram_delta(before, after)
    assert delta["count"] == 6 and delta["sum"] == 11 and delta["mean"] == pytest.approx(11 / 6)
    assert delta["buckets"] == {"<=1": 1, "<=2": 5}  # the bucket that gained nothing is left out
    assert total(_scrape(0, 0, 0, 0, 40), "attrflow_prediction_log_rows_total") == 40
    assert histogram("", name)["count"] == 0  # a metric not there yet


def test_serving_bench_latency_summary_and_targets():
    from bench.serving_load import latency_summary, targets

    level = latency_summary([0.010] * 98 + [0.100, 0.200], seconds=2.0)
    assert level["requests"] == 100 and level["products_per_s"] == 50
    assert level["p50_ms"] == pytest.approx(10) and level["p99_ms"] > 99
    batch = latency_summary([0.5, 0.5], seconds=1.0, products_per_request=64)
    assert batch["products_per_s"] == 128  # products, not requests
    assert latency_summary([], seconds=1.0)["requests"] == 0

    throughput, latency = targets(100.0, (64, 80.0), in_process_p50_ms=20.0, endpoint_p50_ms=45.0)
    assert throughput["met"] and "concurrency 64" in throughput["target"] and "0.80x" in throughput["figures"]
    assert not latency["met"] and latency["figures"] == "45.0 ms vs 20.0 + 20 = 40.0 ms"
    assert targets(100.0, (64, 80.0), 25.0, 45.0)[1]["met"]  # 45 <= 25 + 20: exactly the bar
    assert not targets(101.0, (64, 80.0), 25.0, 45.0)[0]["met"]


def test_serving_bench_serialises_request_bodies_once():
    import base64
    import json

    from bench.serving import json_bodies
    from bench.serving_model import BenchProduct

    products = [BenchProduct(id=str(i), title=f"shirt {i}", image=bytes([i, 255, 0])) for i in range(5)]
    singles = [json.loads(b) for b in json_bodies(products, None)]
    assert [s["id"] for s in singles] == ["0", "1", "2", "3", "4"]
    assert base64.b64decode(singles[3]["image"]) == bytes([3, 255, 0]) and singles[3]["title"] == "shirt 3"
    batches = [json.loads(b)["products"] for b in json_bodies(products, 4)]
    assert [[p["id"] for p in b] for b in batches] == [["0", "1", "2", "3"], ["4", "0", "1", "2"]]  # wraps round


def test_closed_loop_scenario_windows_are_disjoint_and_shifted(fashion_dir, tmp_path, monkeypatch):
    import io

    from PIL import Image, ImageStat

    from bench.loop_report import targets
    from bench.loop_scenario import RARE_TYPES, build_scenario, new_camera, write_catalog

    monkeypatch.setenv("ATTRFLOW_FASHION_DIR", str(fashion_dir))
    scenario = build_scenario(tmp_path / "catalog", controls=2)
    windows = [scenario.before_ids, *([p.id for p in w] for w in scenario.controls)]
    windows += [[p.id for p in scenario.shift_a], [p.id for p in scenario.shift_b]]
    ids = [i for w in windows for i in w]
    assert len(ids) == len(set(ids))  # no product in two windows: control traffic is unseen
    mix = scenario.describe()
    assert mix["shift_a"]["winter_share"] == 1.0 and mix["shift_a"]["rare_types_share"] == 0.75
    assert mix["before"]["rare_types_share"] < 0.1 and mix["before"]["winter_share"] < 0.3
    assert all(abs(w["winter_share"] - mix["before"]["winter_share"]) < 0.1 for w in mix["control_windows"])

    photo = scenario.shift_b[0].image
    (r0, g0, b0), (r1, g1, b1) = (
        ImageStat.Stat(Image.open(io.BytesIO(x)).convert("RGB")).mean for x in (photo, new_camera(photo))
    )
    assert r1 + g1 + b1 < 0.7 * (r0 + g0 + b0) and b1 / max(r1, 1) < b0 / max(r0, 1)  # darker, warmer

    scenario.catalog_ids += [p.id for p in scenario.shift_b[:3]]
    scenario.camera_ids |= {p.id for p in scenario.shift_b[:3]}
    spec = write_catalog(scenario)
    images = spec.parent / "images"
    assert len(list(images.iterdir())) == len(scenario.before_ids) + 3
    assert not (images / f"{scenario.shift_b[0].id}.jpg").is_symlink()  # the new camera's photo, written
    assert (images / f"{scenario.before_ids[0]}.jpg").is_symlink()  # the others read in place
    assert set(RARE_TYPES) <= set(scenario.frame["articleType"])

    refused = {"version": 4, "stage": "candidate", "decision": "worse", "served_before": 3, "served_after": 3}
    met = {t["target"]: t["met"] for t in targets({"target_minutes": 15.0, "weaker_challenger": refused})}
    assert met == {"a weaker challenger is refused": True}
    promoted = {**refused, "stage": "production", "served_after": 4}
    assert not targets({"target_minutes": 15.0, "weaker_challenger": promoted})[0]["met"]


def test_a_setting_added_later_unset_keeps_stored_rows():
    """Rows stored before a new off-by-default (None) setting existed still count as current;
    a changed value does not."""
    from bench.stored import same_config

    old = {"training": {"epochs": 12, "lr_head": 0.002}}
    assert same_config(old, {"training": {"epochs": 12, "lr_head": 0.002, "max_seconds": None}})
    assert not same_config(old, {"training": {"epochs": 12, "lr_head": 0.002, "max_seconds": 60}})
    assert not same_config(old, {"training": {"epochs": 14, "lr_head": 0.002}})
    assert not same_config(None, old)
