"""Prefect flows: thin wrappers that call `components` and record what happened.

Importing this package points Prefect at attrflow's data directory (unless the
user configured Prefect already), so flow runs, the local UI and `make demo`
share one history under ATTRFLOW_HOME/prefect.
"""

import os

from components.settings import get_settings

if "PREFECT_HOME" not in os.environ:
    _prefect_home = get_settings().home.resolve() / "prefect"
    _prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level
    os.environ["PREFECT_HOME"] = str(_prefect_home)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
