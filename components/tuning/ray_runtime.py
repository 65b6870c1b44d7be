"""The Ray side of a search: a local instance or a cluster connection, and what the workers need.

with ray_session():                        # local Ray on this machine's cores, shut down after
with ray_session("ray://head:10001"):      # an existing cluster (also: ATTRFLOW_RAY_ADDRESS)

A local instance binds 127.0.0.1 only: nothing of it is reachable from another machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.settings import get_settings

# Ray must not phone home, start a dashboard or write TensorBoard files for every trial.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    # Ray starts its workers at nice 15, as background work; here they are the job (trials, batch
    # scoring). On a machine shared with other work they would get ~1/30 of a core each.
    "RAY_worker_niceness": "0",
}


def worker_env(home: Path | None = None) -> dict[str, str]:
    """What the trial workers need: ATTRFLOW_HOME as an absolute path, offline hubs, quiet Ray."""
    home = Path(home or get_settings().home).resolve()
    env = {**RAY_ENV, "ATTRFLOW_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for name in ("ATTRFLOW_DB_URL", "ATTRFLOW_FASHION_DIR"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


@contextmanager
def ray_session(address: str | None = None, env: dict[str, str] | None = None) -> Iterator[None]:
    """A local Ray instance (all CPUs, no dashboard, on 127.0.0.1) started here and shut down after,
    or a connection to the cluster at `address` (ray://host:10001, a head's host:port, or auto;
    default ATTRFLOW_RAY_ADDRESS). Reuses one already up."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        yield
        return
    runtime_env = {"env_vars": env or worker_env()}
    address = address or get_settings().ray_address
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        try:
            yield
        finally:
            ray.shutdown()
        return
    with _loopback_only():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=True)
        try:
            yield
        finally:
            ray.shutdown()


@contextmanager
def _loopback_only() -> Iterator[None]:
    """A local instance on 127.0.0.1 only. On Linux Ray replaces a loopback node address (even an
    explicit `_node_ip_address="127.0.0.1"`) by the machine's address, and its GCS and raylet then
    listen on every interface; with multi-node clustering off (Ray's switch for Windows / macOS)
    it keeps 127.0.0.1 and every process it starts listens there. The switch is read once at
    import by this process, and from the environment by the processes Ray starts; both are
    restored afterwards, so a later cluster connection from this process still works."""
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    before_env, before_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before_env


def gpus_available() -> bool:
    import ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0:
        return True
    import torch

    return torch.cuda.is_available()


def ray_client() -> bool:
    """Connected through Ray Client (ray://)? Then Tune's driver loop runs on the cluster's head."""
    import ray

    return bool(ray.util.client.ray.is_connected())
