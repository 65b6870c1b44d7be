"""attrflow's HTTP endpoint: a BentoML service over `components.inference` (see service.py).

BentoML's usage tracking is switched off before bentoml is imported by anything that imports this
package first (the package flow, tests, a notebook): BENTOML_DO_NOT_TRACK is set unless the
environment already says otherwise. The `bentoml` command reads the variable before it loads the
service, so for `bentoml serve` / `bentoml build` it must come from the environment (the Makefile
exports it; the Bento carries it for containers) or from `--do-not-track`.
"""

import os

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
