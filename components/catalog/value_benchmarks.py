"""Reader for the value-extraction benchmarks' JSONL layout (AE-110k, OA-Mine as released with
ExtractGPT): one product a line, `{"input": title, "category": ..., "target_scores": {attribute:
{value: 1, ...} or {"n/a": 1}}}`. Each category defines its own attribute set.

Every row ends accepted (values located as spans) or quarantined with its reason. A row whose
values cannot all be placed is still a well-formed product: it keeps its targets (`row`), so an
evaluation can score it, while training leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from components.catalog.readers import read_records
from components.catalog.spans import Boundaries, SpanRow, locate_values

NO_VALUE = "n/a"


@dataclass
class Quarantined:
    line: int  # 1-based
    reason: str
    row: SpanRow | None = None  # the parsed product when only its spans failed


@dataclass
class ValueRows:
    accepted: list[SpanRow] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)

    def all_products(self) -> list[SpanRow]:
        """Every well-formed product (for evaluation), accepted or not, in file order."""
        rows = [(int(r.id), r) for r in self.accepted]
        rows += [(q.line, q.row) for q in self.quarantined if q.row is not None]
        return [r for _, r in sorted(rows, key=lambda x: x[0])]

    def attribute_sets(self) -> dict[str, list[str]]:
        """Per category, the attributes its products name (in order of first appearance)."""
        out: dict[str, dict[str, None]] = {}
        for r in self.all_products():
            out.setdefault(r.category, {}).update(dict.fromkeys(r.values))
        return {c: list(a) for c, a in out.items()}


def parse_values(targets) -> dict[str, list[str]]:
    """A row's named attributes and their values: `{attribute: {value: score, ...} | [value, ...] |
    value}`, where "n/a", an empty list or null is "named, no value". Raises ValueError on any other shape."""
    if not isinstance(targets, dict) or not targets:
        raise ValueError(f"expected an object of attribute -> values, got {type(targets).__name__}")
    out = {}
    for attr, vs in targets.items():
        if isinstance(vs, (str, int, float)):
            vs = [vs]
        elif vs is None:
            vs = []
        elif not isinstance(vs, (dict, list)):
            raise ValueError(f"attribute {attr!r}: expected values as an object, a list or a string")
        values = [str(v).strip() for v in vs]
        out[str(attr)] = [v for v in dict.fromkeys(values) if v and v.lower() != NO_VALUE]
    return out


def _parse(obj: dict) -> tuple[str, str, dict[str, list[str]]]:
    text, category, targets = obj.get("input"), obj.get("category"), obj.get("target_scores")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("no input text")
    if not isinstance(category, str) or not category:
        raise ValueError("no category")
    if not isinstance(targets, dict) or not all(isinstance(v, dict) for v in targets.values()):
        raise ValueError("target_scores is not an object of objects")
    return text, category, parse_values(targets)


def read_value_benchmark(
    path: str | Path, boundaries: Boundaries | None = None, exclusive: bool = False, widen: bool = False
) -> ValueRows:
    """`boundaries`: where spans may start and end (default word boundaries; a tagger passes its
    tokenizer's token edges); `exclusive=False`: attributes may share text; `widen`: a value
    only inside a token is labelled with the whole token (see components.catalog.spans)."""
    out = ValueRows()
    for rec in read_records(Path(path), "jsonl"):
        if rec.values is None:
            out.quarantined.append(Quarantined(rec.row, rec.error or "unreadable"))
            continue
        try:
            text, category, values = _parse(rec.values)
        except ValueError as e:
            out.quarantined.append(Quarantined(rec.row, str(e)))
            continue
        spans, problems = locate_values(text, values, boundaries, exclusive, widen)
        row = SpanRow(id=str(rec.row), text=text, category=category, values=values, spans=spans)
        if problems:
            attr, why = next(iter(problems.items()))
            out.quarantined.append(Quarantined(rec.row, f"{attr}: {why}", row))
        else:
            out.accepted.append(row)
    return out
