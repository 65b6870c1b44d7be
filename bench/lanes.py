"""Running rows side by side: one child process of bench/quality.py per row, at most N at a time."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import log

SCRIPT = Path(__file__).resolve().with_name("quality.py")  # what each lane runs

# Longest first, so the lanes finish together (rough seconds per row in a lane on the 2-core reference machine).
_ROW_COST = {
    "finetune-modality_attention": 490,
    "finetune-concat": 480,
    "finetune-image": 380,
    "finetune-text": 200,
    "cross_attention": 430,
    "modality_attention": 280,
    "late": 280,
    "concat": 250,
    "image": 215,
    "tfidf_lr": 150,
    "text": 65,
}


@dataclass
class LaneJob:
    name: str
    command: list[str]
    after: set[str] = field(default_factory=set)  # jobs that must finish first


def lane_jobs(args: argparse.Namespace, names: list[str], colour_rows: list[str], datasets: list[str]) -> list[LaneJob]:
    """One child process of bench/quality.py per row: `--jobs 1 --threads 1 --no-report`, given the
    ingested dataset folders (`datasets`: --dataset DIR [--colour-dataset DIR])."""
    base = [
        sys.executable,
        str(SCRIPT),
        "--jobs",
        "1",
        "--threads",
        "1",
        "--no-report",
        "--out",
        str(args.out),
        *datasets,
    ]
    if args.reuse:
        base.append("--reuse")
    jobs = [LaneJob(n, [*base, "--rows", n, "--skip-tfidf", "--skip-colour-hidden"]) for n in names]
    if not args.skip_tfidf:
        jobs.append(LaneJob("tfidf_lr", [*base, "--rows", "none", "--skip-colour-hidden"]))
    jobs.sort(key=lambda j: -next((c for k, c in _ROW_COST.items() if j.name.startswith(k)), 300))
    lambdas = {n for n in names if n.startswith("modality_attention_l")}
    for n in colour_rows:  # the colour-hidden modality_attention row takes the best lambda: after those rows
        jobs.append(
            LaneJob(
                f"colour_hidden-{n}",
                [*base, "--rows", "none", "--skip-tfidf", "--colour-rows", n],
                after=lambdas if n == "modality_attention" else set(),
            )
        )
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
                raise ValueError(
                    f"jobs waiting for jobs that never run: {[(j.name, sorted(j.after - done)) for j in pending]}"
                )
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
