"""The benchmarks on the real fashion catalog (bench/quality.py, bench/tune.py, bench/variant.py) and their parts."""

import os

# Nothing here may reach a model hub: the default encoder weights ship in packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
