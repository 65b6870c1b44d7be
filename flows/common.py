"""Small pieces the flows share: when to retry, artifact keys, flow-run ids."""

from __future__ import annotations

import re

import sqlalchemy.exc
from prefect.runtime import flow_run


def retry_on_io_error(task, task_run, state) -> bool:
    """Retry failures a retry can fix (I/O, a busy database); a bad spec or a bug fails at once."""
    try:
        state.result()
    except FileNotFoundError:
        return False
    except (OSError, sqlalchemy.exc.OperationalError):
        return True
    except BaseException:
        return False
    return False


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def current_flow_run_id() -> str | None:
    run_id = flow_run.get_id()
    return str(run_id) if run_id else None


def metrics_table(attributes: dict[str, dict]) -> str:
    head = "| attribute | accuracy | F1 macro | F1 weighted | R@P95 |\n|---|---|---|---|---|\n"
    rows = []
    for name, m in attributes.items():
        acc = "-" if m.get("accuracy") is None else f"{m['accuracy']:.3f}"
        rows.append(f"| {name} | {acc} | {m['f1_macro']:.3f} | {m['f1_weighted']:.3f} | {m['r_at_p95']:.3f} |")
    return head + "\n".join(rows) + "\n"
