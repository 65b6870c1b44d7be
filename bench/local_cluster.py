"""A Ray cluster of several nodes on this machine, for the tests and the scale benchmark: `ray start
--head` and `ray start --address` as process groups of the caller, each node with its own CPUs,
temp folder and ports, authenticated by a token of its own.

    cluster = LocalCluster(nodes=2, cpus_per_node=1)
    node_ids = cluster.start()
    ...   # ray.init(address=cluster.address) with cluster.auth in the environment
    cluster.stop()

`stop` ends the process groups it started (not `ray stop`, which ends every Ray process on the
machine, other users' included), then any process still naming its temp folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.tuning.ray_runtime import RAY_ENV

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_worker_port(node: int, cluster_port: int) -> int:
    """The first of a node's 100 worker ports: below Linux's ephemeral range (32768 and up), where
    `free_port` never lands (a worker range inside it collided with a node's other ports), distinct
    per node and, by the cluster's own port, per cluster."""
    return 10000 + node * 4000 + cluster_port % 40 * 100


def _ports(first_worker: int) -> list[str]:
    """Every port a node opens, distinct per node: two nodes share one machine."""
    return [
        "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--min-worker-port", str(first_worker),
        "--max-worker-port", str(first_worker + 99),
    ]  # fmt: skip


class LocalCluster:
    """`ray start --head` and `ray start --address` as process groups of this test."""

    def __init__(self, nodes: int = 2, cpus_per_node: int = 1) -> None:
        if not 1 <= nodes <= 5:
            raise ValueError("a local cluster has 1 to 5 nodes (their worker ports stay below 32768)")
        self.nodes, self.cpus_per_node = nodes, cpus_per_node
        self.root = Path(tempfile.mkdtemp(prefix="afray"))  # short: Ray's unix sockets live under it
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        # Token authentication with a token of this cluster's own (Ray 2.5x's default is a token in
        # ~/.ray/auth_token, which the driver in this process would have to find).
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env = {**os.environ, **RAY_ENV, **self.auth}

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - the node writes to it until stopped
        cmd = [RAY, "start", *args, "--num-cpus", str(self.cpus_per_node), "--disable-usage-stats", "--block"]
        self.procs.append(
            subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def start(self, timeout: float = 120) -> list[str]:
        """Every node up; returns their node ids."""
        self._start(
            "head",
            [
                "--head",
                "--node-ip-address", "127.0.0.1",
                "--port", str(self.port),
                "--ray-client-server-port", str(free_port()),
                "--include-dashboard", "false",
                "--temp-dir", str(self.root / "head"),
                *_ports(first_worker_port(0, self.port)),
            ],
        )  # fmt: skip
        self._wait_for(1, timeout)
        for n in range(1, self.nodes):
            self._start(
                f"worker{n}",
                [
                    "--address", self.address,
                    "--node-ip-address", "127.0.0.1",
                    "--temp-dir", str(self.root / f"worker{n}"),
                    *_ports(first_worker_port(n, self.port)),
                ],
            )  # fmt: skip
        return self._wait_for(self.nodes, timeout)

    def _wait_for(self, nodes: int, timeout: float) -> list[str]:
        probe = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR');"
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited {p.returncode}: {self.logs()}")
            out = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True)
            if out.returncode == 0:
                alive = json.loads(out.stdout.strip().splitlines()[-1])
                if len(alive) >= nodes:
                    return alive
            time.sleep(2)
        raise TimeoutError(f"{nodes} Ray node(s) not up after {timeout} s: {self.logs()}")

    @contextlib.contextmanager
    def driver_auth(self):
        """This process authenticates as a driver of the cluster (its token in the environment),
        and is back to its own settings afterwards. Ray keeps the auth mode in its config and the
        token in a cache, once per process: both are read again on the way in and on the way out
        (as ray._private.authentication_test_utils.reset_auth_token_state does), else a later
        local Ray of this process would present this cluster's token."""
        from ray._raylet import AuthenticationTokenLoader, Config

        before = {k: os.environ.get(k) for k in self.auth}
        os.environ.update(self.auth)
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        try:
            yield
        finally:
            for k, v in before.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.root.glob("*.log"))

    def stop(self) -> None:
        for p in reversed(self.procs):  # the other nodes first, then the head
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:  # a node drains for up to 30 s on SIGTERM; nothing of a throwaway cluster needs that
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for pid in self.leftovers():  # Ray processes that left the group, found by our temp folder
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if str(self.root).encode() in (proc / "cmdline").read_bytes():
                        found.append(int(proc.name))
                except OSError:
                    continue
        return found
