"""Span labels: where an attribute's value sits in a product's text, as character offsets.

`SpanRow` is the internal format of value extraction: the text, the expected values per
attribute (an empty list: the product has no value for it, "n/a") and the spans
`{attribute, start, end}` that locate them. `locate_values` derives the spans from values
(distant labels): case-insensitive, on token boundaries, longest match first, every occurrence.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Span:
    start: int
    end: int  # exclusive
    attribute: str

    def text(self, source: str) -> str:
        return source[self.start : self.end]


@dataclass
class SpanRow:
    id: str
    text: str
    category: str
    values: dict[str, list[str]]  # attribute -> accepted values ([] = no value, "n/a")
    spans: list[Span] = field(default_factory=list)


Boundaries = Callable[[str], set[int]]  # text -> the character positions a span may start or end at


def word_boundaries(text: str) -> set[int]:
    """Positions not inside a word: "mm" in "150mm" does not start at one."""
    return {i for i in range(len(text) + 1) if i in (0, len(text)) or not (text[i - 1].isalnum() and text[i].isalnum())}


def occurrences(text: str, value: str, allowed: set[int] | None = None) -> list[tuple[int, int]]:
    """Every case-insensitive occurrence of `value` in `text` that starts and ends at an allowed
    position (default: word boundaries)."""
    value = value.strip()
    if not value:
        return []
    allowed = word_boundaries(text) if allowed is None else allowed
    return [
        (m.start(), m.end())
        for m in re.finditer(re.escape(value), text, flags=re.IGNORECASE)
        if m.start() in allowed and m.end() in allowed
    ]


def widened(text: str, value: str, allowed: set[int], min_share: float = 0.5) -> list[tuple[int, int]]:
    """Occurrences of `value` inside a token, widened to the token's edges ("Letter" in "Letters"),
    where the value is at least `min_share` of the widened text (not "9" in "409")."""
    value = value.strip()
    out = []
    for m in re.finditer(re.escape(value), text, flags=re.IGNORECASE) if value else []:
        start = max(p for p in allowed if p <= m.start())
        end = min(p for p in allowed if p >= m.end())
        if (start, end) != (m.start(), m.end()) and len(value) >= min_share * (end - start):
            out.append((start, end))
    return out


def locate_values(
    text: str,
    values: dict[str, list[str]],
    boundaries: Boundaries | None = None,
    exclusive: bool = True,
    widen: bool = False,
) -> tuple[list[Span], dict[str, str]]:
    """Spans for every attribute's values, and a problem per attribute that got none.

    Longest match first: a match overlapping a longer one already placed is dropped (a colour
    "Blue" inside a placed "Navy Blue"); on equal length the earlier start, then the attribute
    listed first, wins. `exclusive=False` applies that only within each attribute, so two
    attributes may share text (a brand that is also the product name), for taggers that tag
    each attribute on its own layer. `boundaries` gives where spans may start and end (e.g.
    an encoder's token edges); default: word boundaries. `widen=True`: a value found only inside
    a token gets that token's span (see `widened`; the span's text then differs from the value).
    """
    allowed = (boundaries or word_boundaries)(text) | {0, len(text)}
    candidates = []
    for order, (attr, vals) in enumerate(values.items()):
        found = [o for v in vals for o in occurrences(text, v, allowed)]
        if not found and widen:
            found = [o for v in vals for o in widened(text, v, allowed)]
        candidates += [(end - start, start, order, attr) for start, end in found]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    taken: dict[str, list[bool]] = {}
    spans: list[Span] = []
    for length, start, _, attr in candidates:
        layer = taken.setdefault("" if exclusive else attr, [False] * len(text))
        if any(layer[start : start + length]):
            continue
        layer[start : start + length] = [True] * length
        spans.append(Span(start, start + length, attr))
    placed = {s.attribute for s in spans}
    problems: dict[str, str] = {}
    for attr, vals in values.items():
        if not vals or attr in placed:
            continue
        if any(occurrences(text, v, allowed) for v in vals):
            problems[attr] = f"value {vals[0]!r} overlaps a longer value of another attribute"
        elif any(v.strip().lower() in text.lower() for v in vals):
            problems[attr] = f"value {vals[0]!r} is in the text only inside a token"
        else:
            problems[attr] = f"value {vals[0]!r} is not in the text"
    return sorted(spans), problems


def surface_forms(rows: list[SpanRow]) -> dict[str, dict[str, str]]:
    """Per attribute, what a span's text (lower-cased) stands for, learned from the training
    spans: the labelled value most often found there, kept where it is not the lower-cased text
    itself. Two kinds: the value inside a widened token ("letters" -> "Letter"), and the casing the
    annotators write a value in ("women" -> "Women"; see `value_of`)."""
    counts: dict[tuple[str, str], Counter[str]] = {}
    for r in rows:
        for s in r.spans:
            surface, vals = s.text(r.text).lower(), [v.strip() for v in r.values.get(s.attribute, [])]
            exact = [v for v in vals if v.lower() == surface]
            inside = exact or [v for v in vals if v and v.lower() in surface]
            if inside:
                counts.setdefault((s.attribute, surface), Counter())[inside[0]] += 1
    out: dict[str, dict[str, str]] = {}
    for (attr, surface), c in sorted(counts.items()):
        form = c.most_common(1)[0][0]
        if form != surface:
            out.setdefault(attr, {})[surface] = form
    return out


def value_of(text: str, start: int, end: int, forms: dict[str, str]) -> str:
    """The value a decoded span stands for, given its attribute's learned `forms` (surface_forms):
    the value inside a widened token; the annotators' casing of the span's text where the text
    writes it that way too (they copy a value from one of its occurrences: a title with "women"
    and "Women" is labelled "Women" whichever the tagger found); else the span's own text."""
    span = text[start:end]
    form = forms.get(span.lower())
    if form is None or (form.lower() == span.lower() and form not in text):
        return span
    return form


def spans_from_attributes(
    row_id: str, title: str, category: str, labels: dict[str, str | list[str] | None]
) -> tuple[SpanRow, dict[str, str]]:
    """Distant labels for a catalog row whose attribute columns hold values that may be written in
    its title (the fashion catalog's baseColour, articleType, gender, usage): one flat layer, word
    boundaries, longest match first. An attribute whose value is not in the title gets no span
    ("no span"; the row still counts, e.g. for image-aware training); its problem says why."""
    values = {a: ([v] if isinstance(v, str) else list(v or [])) for a, v in labels.items()}
    values = {a: [v for v in vs if v and v.strip()] for a, vs in values.items()}
    spans, problems = locate_values(title, values)
    return SpanRow(row_id, title, category, values, spans), problems


def distant_rows(items, attributes: list[str], category: str = "all") -> list[SpanRow]:
    """A dataset's products (items: id, title, attribute columns) as span rows by distant labelling
    (`spans_from_attributes`). Expected values are the title's own text at the located spans: an
    attribute whose value is not written in the title expects none (there is nothing to extract)."""
    rows = []
    for r in items[["id", "title", *attributes]].itertuples(index=False):
        row, _ = spans_from_attributes(str(r[0]), r[1] or "", category, dict(zip(attributes, r[2:], strict=True)))
        located = {a: sorted({s.text(row.text) for s in row.spans if s.attribute == a}) for a in attributes}
        rows.append(SpanRow(row.id, row.text, category, located, row.spans))
    return rows


def dataset_rows(items, attributes: list[str] | None = None, boundaries: Boundaries | None = None) -> list[SpanRow]:
    """A dataset split's products as span rows. A value-extraction catalog (ingested with a
    `values_column`: the items have `values`) gives its named values, located again on `boundaries`
    (a tagger's token edges; ingestion placed them on word boundaries); `attributes` keeps those
    (None: all). Other catalogs give distant labels of the `attributes` columns (`distant_rows`).
    The category is the `category` column where there is one."""
    if "values" not in items.columns:
        if attributes is None:
            raise ValueError("distant labels need the attribute columns to read")
        return distant_rows(items, attributes)
    categories = items["category"] if "category" in items.columns else ["all"] * len(items)
    rows = []
    for id_, text, category, cell in zip(items["id"], items["title"], categories, items["values"], strict=True):
        named = json.loads(cell)
        if attributes is not None:
            named = {a: v for a, v in named.items() if a in attributes}
        spans, _ = locate_values(text, named, boundaries, exclusive=False, widen=True)
        rows.append(SpanRow(str(id_), text, str(category or "all"), named, spans))
    return rows


def fully_located(rows: list[SpanRow]) -> list[SpanRow]:
    """The rows whose every named value has a span: what a tagger can learn from without being
    taught that a value it does not see is no value."""
    return [r for r in rows if {a for a, v in r.values.items() if v} <= {s.attribute for s in r.spans}]


_SEPARATORS = " \t,;"


def chunk_boundaries(text: str) -> set[int]:
    """Positions between whitespace- or comma-separated chunks ("Wave.Cruise" is one chunk)."""
    return {
        i for i in range(len(text) + 1) if i in (0, len(text)) or text[i - 1] in _SEPARATORS or text[i] in _SEPARATORS
    }


def word_aligned_attributes(rows: list[SpanRow], min_share: float = 0.98) -> dict[str, str]:
    """Per attribute whose labelled spans (nearly) always start and end on chunk boundaries
    ("chunk") or at least word boundaries ("word"): a tagger's span for it that stops inside one
    ("Sim-Plici", "Wave" of "Wave.Cruise") can be snapped out to it."""
    total: Counter[str] = Counter()
    hits: dict[str, Counter[str]] = {"chunk": Counter(), "word": Counter()}
    for r in rows:
        edges = {"chunk": chunk_boundaries(r.text), "word": word_boundaries(r.text)}
        for s in r.spans:
            total[s.attribute] += 1
            for level, e in edges.items():
                hits[level][s.attribute] += s.start in e and s.end in e
    out = {}
    for a, n in sorted(total.items()):
        level = next((lv for lv in ("chunk", "word") if hits[lv][a] >= min_share * n), None)
        if level:
            out[a] = level
    return out


def snap_to_words(text: str, start: int, end: int, level: str = "word") -> tuple[int, int]:
    """Widen (start, end) so that it neither starts nor ends inside a word (or a chunk)."""
    if level == "chunk":
        while start > 0 and text[start - 1] not in _SEPARATORS and text[start] not in _SEPARATORS:
            start -= 1
        while end < len(text) and text[end - 1] not in _SEPARATORS and text[end] not in _SEPARATORS:
            end += 1
        return start, end
    while 0 < start < len(text) and text[start - 1].isalnum() and text[start].isalnum():
        start -= 1
    while 0 < end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
        end += 1
    return start, end


def trim_separators(text: str, start: int, end: int, chars: str = " ,;:/-|") -> tuple[int, int]:
    """Drop separators a span picked up at its edges ("49-" -> "49"), keeping at least one character."""
    while end - start > 1 and text[end - 1] in chars:
        end -= 1
    while end - start > 1 and text[start] in chars:
        start += 1
    return start, end
