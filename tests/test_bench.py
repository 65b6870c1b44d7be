"""The benchmark scripts' own machinery (bench/quality.py, bench/tune.py): running rows side by
side, the paired bootstrap behind the target checks, and reading the register flow's metrics.
The benchmarks themselves need the fashion catalog and run in `make bench`."""

from __future__ import annotations

import importlib.util
import sys
import time

import numpy as np
import pytest
from conftest import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


quality = _load("quality")


def _job(name: str, log, seconds: float = 0.3, code: int = 0, after=()):
    script = (f"import time; open({str(log)!r}, 'a').write('start {name} %f\\n' % time.time()); time.sleep({seconds}); "
              f"open({str(log)!r}, 'a').write('end {name} %f\\n' % time.time()); raise SystemExit({code})")
    return quality.LaneJob(name, [sys.executable, "-c", script], set(after))


def _events(log) -> list[tuple[str, str, float]]:
    return [(kind, name, float(t)) for kind, name, t in (line.split() for line in log.read_text().splitlines())]


def test_lanes_run_side_by_side_and_respect_dependencies(tmp_path):
    log = tmp_path / "log"
    jobs = [_job("a", log), _job("b", log), _job("c", log), _job("last", log, after={"a", "b", "c"})]
    quality.run_lanes(jobs, lanes=2, poll_s=0.05)
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
        quality.run_lanes(jobs, lanes=2, poll_s=0.05)
    assert time.perf_counter() - start < 20  # "slow" was terminated, not waited for
    names = {n for _, n, _ in _events(log)}
    assert "never" not in names and ("end", "slow") not in {(k, n) for k, n, _ in _events(log)}
    with pytest.raises(ValueError, match="never run"):
        quality.run_lanes([_job("orphan", log, after={"missing"})], lanes=2, poll_s=0.05)


def test_paired_bootstrap_brackets_the_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 600)
    good = np.eye(4)[y] * 0.7 + 0.075  # always right, confident
    noisy = rng.dirichlet(np.ones(4), 600)  # right about a quarter of the time
    same = quality.paired_bootstrap(good, good, y, n=100)
    assert same["f1_macro"] == [0.0, 0.0] and same["r_at_p95"] == [0.0, 0.0]
    better = quality.paired_bootstrap(good, noisy, y, n=100)
    assert better["f1_macro"][0] > 0.5 and better["r_at_p95"][0] > 0.5
    worse = quality.paired_bootstrap(noisy, good, y, n=100)
    assert worse["f1_macro"][1] < -0.5


def test_tune_bench_reads_the_register_flows_metrics():
    tune = _load("tune")
    from components.evaluation.report import AttributeReport, EvaluationReport
    from flows.register import summarize

    attrs = {}
    for k, a in enumerate(tune.ATTRIBUTES):
        attrs[a] = AttributeReport(kind="multiclass", n=10, accuracy=0.9, f1_micro=0.9, f1_macro=0.5 + k / 10,
                                   f1_weighted=0.9, r_at_p95=0.8)
    means, per = tune.test_summary(summarize(EvaluationReport(model="m", dataset="d", split="test", attributes=attrs)))
    assert means["f1_macro"] == pytest.approx(0.7) and means["r_at_p95"] == pytest.approx(0.8)
    assert per["usage"]["f1_macro"] == pytest.approx(0.9)
