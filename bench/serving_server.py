"""The endpoint under test: `bentoml serve serving.service:AttributeService` as a subprocess.

Started in its own process group on a free 127.0.0.1 port, with ATTRFLOW_MODEL_DIR pointing at
the model and ATTRFLOW_HOME (and BENTOML_HOME) in a scratch folder; every other setting is the
default unless the caller overrides it. Cold start is the time from starting the process to the
first 200 from /readyz. RSS and CPU time are summed over the server's process tree (psutil).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from bench.common import ROOT


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log_path: Path
    cold_start_s: float

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def rss_mb(self) -> float:
        """Resident memory of the server's processes, summed (MB)."""
        return sum(_safe(lambda p: p.memory_info().rss, p) for p in self.tree()) / 2**20

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by the server's live processes, by role: the
        front (`attrflow`), the scorer (`attrflow_scorer`), BentoML's supervisor (`serve`)."""
        out: dict[str, float] = {}
        for p in self.tree():
            role = _role(p)
            out[role] = out.get(role, 0.0) + _safe(lambda p: sum(p.cpu_times()[:2]), p)
        return out

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _safe(read, process: psutil.Process) -> float:
    try:
        return float(read(process))
    except psutil.Error:  # a process that ended meanwhile
        return 0.0


def _role(process: psutil.Process) -> str:
    try:
        args = process.cmdline()
    except psutil.Error:
        return "gone"
    return args[args.index("--service-name") + 1] if "--service-name" in args[:-1] else "serve"


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy (not idle or waiting for I/O), all cores summed."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model_dir: Path | None, scratch: Path, env: dict[str, str], checkout: Path = ROOT, ready_timeout_s: float = 300
) -> Server:
    """Start the endpoint on `model_dir` (None: the registry's production version of
    ATTRFLOW_MODEL_NAME, given in `env`) and wait for /readyz; `env`: extra ATTRFLOW_* settings;
    `checkout`: the folder whose serving/ (and components/) is served, this repository by default."""
    port = free_port()
    scratch.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        **({"ATTRFLOW_MODEL_DIR": str(model_dir)} if model_dir is not None else {}),
        "ATTRFLOW_HOME": str(scratch / "home"),
        "BENTOML_HOME": str(scratch / "bentoml"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        **env,
    }
    log_path = scratch / "server.log"
    command = [sys.executable, "-m", "bentoml", "serve", "serving.service:AttributeService", "--port", str(port)]
    started = time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=checkout, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    server = Server(proc, url, log_path, float("nan"))
    try:
        server.cold_start_s = _wait_ready(server, started, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: Server, started: float, timeout_s: float) -> float:
    """Seconds from `started` to the first 200 from /readyz."""
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"bentoml serve exited ({server.proc.returncode}): {server.log_path.read_text()[-3000:]}"
            )
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError(
                f"bentoml serve not ready after {timeout_s:.0f} s: {server.log_path.read_text()[-3000:]}"
            )
        time.sleep(0.1)
