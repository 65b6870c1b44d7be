"""The dictionary baseline for value extraction: the values seen in training, per category and
attribute, matched in a title (case-insensitive, on word boundaries), longest match first."""

from __future__ import annotations

from components.catalog.spans import SpanRow, occurrences, word_boundaries


class ValueDictionary:
    def __init__(self, values: dict[tuple[str, str], list[str]]):
        # longest first, so the first value found is the longest match
        self.values = {k: sorted(set(v), key=lambda s: (-len(s), s.lower())) for k, v in values.items()}

    @classmethod
    def fit(cls, rows: list[SpanRow]) -> ValueDictionary:
        seen: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            for attr, vals in r.values.items():
                seen.setdefault((r.category, attr), []).extend(v for v in vals if v.strip())
        return cls(seen)

    def predict(self, text: str, category: str, attributes: list[str]) -> dict[str, tuple[int, int]]:
        """Per attribute, the (start, end) of its longest known value in `text` (earliest on ties)."""
        allowed = word_boundaries(text)
        out: dict[str, tuple[int, int]] = {}
        for attr in attributes:
            best: tuple[int, int] | None = None
            for v in self.values.get((category, attr), []):
                if best is not None and len(v) < best[1] - best[0]:
                    break
                hits = occurrences(text, v, allowed)
                if hits and (best is None or hits[0][0] < best[0]):
                    best = hits[0]
            if best is not None:
                out[attr] = best
        return out
