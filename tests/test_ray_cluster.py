"""A two-node Ray cluster on this machine, for real: a head and a second node started with
`ray start` (one CPU each, own temp folders and ports), `attrflow tune --address` against it, trials
on both nodes, every trial in the registry (SQLite always, PostgreSQL too when ATTRFLOW_TEST_PG_URL
is set). The nodes are started with --node-ip-address 127.0.0.1, but Ray gives a multi-node
cluster the machine's address (it refuses loopback for more than one node); a local Ray of one
node binds 127.0.0.1 only (the last test).

The cluster is bench/local_cluster.py's (the scale benchmark uses it too); its teardown ends the
process groups it started, not `ray stop`, which would end every Ray process on the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_tune import _search_file

from bench.local_cluster import LocalCluster
from components.catalog import ingest, load_spec
from components.catalog.demo import write_demo_catalog
from components.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster(nodes=2, cpus_per_node=1)
    try:
        nodes = c.start()
        yield c, nodes
    finally:
        c.stop()
    assert not c.leftovers(), "Ray processes of the test cluster still running"


# SQLite only: this test is about the worker / the cluster (minutes each); the flow and tune tests
# (test_flows, test_tune, test_loop) run on PostgreSQL too when ATTRFLOW_TEST_PG_URL is set.
@pytest.mark.parametrize("registry_backend", ["sqlite"], indirect=True)
def test_tune_on_a_two_node_cluster_runs_trials_on_both_nodes(cluster, prefect_server, registry_backend, tmp_path):
    c, nodes = cluster
    assert len(set(nodes)) == 2
    dataset = ingest(load_spec(write_demo_catalog(tmp_path / "catalog", n=100, seed=7))).dataset_dir
    search = _search_file(
        tmp_path / "search.yaml",
        trials=4,
        parameters={"fusion": {"type": "choice", "values": ["text", "concat"]}, "epochs": 2},
        asha={"grace_period": 2},  # no early stops: every trial runs both epochs
        # A fresh worker per trial: with reuse, the first node's worker could take every trial
        # while the other node's worker is still starting (slowly, on a busy machine).
        reuse_actors=False,
    )
    # The real command in its own process, as a user runs it: the cluster's token in its environment
    # (ATTRFLOW_HOME and ATTRFLOW_DB_URL come from this test's).
    env = {**os.environ, **c.auth, "PREFECT_API_URL": prefect_server}
    command = ["tune", str(dataset), search, "--address", c.address, "--model-name", "clustered", "--json"]
    out = subprocess.run(
        [sys.executable, "-m", "attrflow.cli", *command], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}\n{c.logs()}"
    result = _last_json(out.stdout)
    assert all(p.poll() is None for p in c.procs)  # the command let go of the cluster and left it running

    with Registry() as registry:
        trials = registry.list_runs(kind="tune-trial")
        assert len(trials) == 4 == len(result["trials"])
        assert all(t.status == "completed" and t.parent_run_id == result["run_id"] for t in trials)
        ran_on = {t.metrics["node_id"] for t in trials}
        assert ran_on == set(nodes), f"trials ran on {ran_on}, cluster nodes {nodes}"
        assert all(e["node_id"] == t.metrics["node_id"] for t in trials for e in t.epoch_metrics)
        assert registry.get_production("clustered") is not None


def test_a_local_ray_binds_127_0_0_1(tmp_path):
    import ray

    from components.tuning import ray_session

    before = _children()  # e.g. the module's cluster and Prefect server: not this Ray's
    with ray_session():
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        listening = _listening_addresses(_children() - before)
    assert not ray.is_initialized()
    assert listening and listening <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _listening_addresses(pids: set[int]) -> set[str]:
    """The addresses the TCP sockets of these processes (Ray's GCS, raylet, workers) listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                found.add(_address(fields[1].split(":")[0], v6))
    return found


def _address(hexaddr: str, v6: bool) -> str:
    import ipaddress

    raw = bytes.fromhex(hexaddr)
    if not v6:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # /proc prints 4-byte words little-endian
    addr = ipaddress.IPv6Address(words)
    return f"::ffff:{addr.ipv4_mapped}" if addr.ipv4_mapped else str(addr)


def _last_json(output: str) -> dict:
    """The command's JSON line (Ray's worker logs may follow it in the captured output)."""
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))
