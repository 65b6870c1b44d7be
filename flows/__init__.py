"""Prefect flows: thin wrappers that call `components` and record what happened.

Importing this package (every entry point does: the `attrflow` command, `python -m
flows.deployments`, the tests) sets Prefect's defaults for attrflow before Prefect is
imported, unless the user configured them already:

- PREFECT_HOME under ATTRFLOW_HOME, so flow runs, the local UI and `make demo` share one history;
- a start-up timeout for the ephemeral API that fits a small machine: its first start creates
  and migrates Prefect's database, which takes ~40 s on 2 cores (Prefect's default allows 20 s);
- no analytics or telemetry: attrflow runs offline;
- BentoML's store (models and Bentos the `package` flow builds) under ATTRFLOW_HOME too.
"""

import os

from components.settings import get_settings

OFFLINE_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",  # the cross-tool opt-out; Prefect's client honours it too
    "BENTOML_DO_NOT_TRACK": "True",
}

os.environ.setdefault("PREFECT_HOME", str(get_settings().home.resolve() / "prefect"))
os.environ.setdefault("BENTOML_HOME", str(get_settings().home.resolve() / "bentoml"))
os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)  # Prefect creates only the last level
for _name, _value in OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
