"""Picks among rows by validation mean macro-F1: the best row, the best lambda, the fine-tuning rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.rows import ENSEMBLE, FINETUNE_OF, FINETUNE_PREFIX, ROWS


def best_on_validation(rows: dict[str, Any], names) -> str | None:
    """The row among `names` with the best validation mean macro-F1: how every pick here is made."""
    return max(names, key=lambda n: rows[n]["validation_f1_macro"], default=None)


def best_lambda(rows: dict[str, Any]) -> str | None:
    return best_on_validation(rows, [n for n in rows if n.startswith("modality_attention_l")])


def best_single_and_multimodal(rows: dict[str, Any]) -> tuple[str | None, str | None]:
    """The single-modality and the multimodal attrflow rows with the best validation macro-F1."""
    single = best_on_validation(rows, [n for n in ("text", "image") if n in rows])
    return single, best_on_validation(
        rows, [n for n in rows if (n in ROWS or n == ENSEMBLE) and n not in ("text", "image")]
    )


def finetune_rows(out: Path, missing_ok: bool = False) -> list[str]:
    """The fine-tuning rows; `modality_attention` is the best lambda among the stored frozen rows."""
    rows = []
    for n in FINETUNE_OF:
        if n == "modality_attention":
            lambdas = [
                r for r in ROWS if r.startswith("modality_attention_l") and (out / "rows" / f"{r}.json").is_file()
            ]
            n = best_on_validation({p: json.loads((out / "rows" / f"{p}.json").read_text()) for p in lambdas}, lambdas)
            if n is None:
                if missing_ok:
                    continue
                raise SystemExit("--finetune: run the frozen modality_attention rows first (make bench-quality)")
        rows.append(FINETUNE_PREFIX + n)
    return rows
