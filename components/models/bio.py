"""BIO tags, one layer per attribute: each token gets O, B or I for every attribute, so two
attributes may tag the same text (a brand that is also the product's name).

Decoding is a constrained Viterbi per layer (no I after O or at the start), vectorised over
attributes; `spans_from_tags` reads a given tag sequence, treating an I after O as a start.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

O, B, I = 0, 1, 2  # noqa: E741 (the scheme's own letters)
N_TAGS = 3
_NEG = -1e9


def spans_from_tags(tags: Sequence[int]) -> list[tuple[int, int]]:
    """Token spans (first, last inclusive) of one layer. An I after O (or at the start) is read as
    a B, the usual lenient reading (conlleval), so an invalid sequence still yields its spans."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, t in enumerate(tags):
        if t == B or (t == I and start is None):
            if start is not None:
                spans.append((start, i - 1))
            start = i
        elif t == O and start is not None:
            spans.append((start, i - 1))
            start = None
    if start is not None:
        spans.append((start, len(tags) - 1))
    return spans


Transitions = tuple[np.ndarray, np.ndarray, np.ndarray]  # a CRF's (start (3,), from->to (3, 3), end (3,))


def viterbi(log_probs: np.ndarray, transitions: Transitions | None = None) -> np.ndarray:
    """(T, A, 3) log-probabilities -> (T, A) tags: the best sequence per attribute in which every I
    follows a B or an I, scored by the tokens' log-probabilities (plus a CRF's learned
    `transitions`: a per-token shift of the scores, as softmax is, never changes the best path)."""
    T, A, _ = log_probs.shape
    if T == 0:
        return np.zeros((0, A), dtype=np.int64)
    start, trans, end = transitions or (np.zeros(N_TAGS), np.zeros((N_TAGS, N_TAGS)), np.zeros(N_TAGS))
    trans = trans.copy()
    trans[O, I] = _NEG
    score = log_probs[0] + start
    score[:, I] += _NEG
    back = np.zeros((T, A, N_TAGS), dtype=np.int64)
    for t in range(1, T):
        cand = score[:, :, None] + trans[None]  # (A, from, to)
        back[t] = cand.argmax(1)
        score = cand.max(1) + log_probs[t]
    score = score + end
    path = np.zeros((T, A), dtype=np.int64)
    path[-1] = score.argmax(-1)
    cols = np.arange(A)
    for t in range(T - 1, 0, -1):
        path[t - 1] = back[t, cols, path[t]]
    return path


# Exactly one span: states O-before, B, I, O-after (emitting O, B, I, O).
_ONE_EMIT = np.array([O, B, I, O])
_ONE_TRANS = np.full((4, 4), _NEG)
for _a, _b in [(0, 0), (0, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3)]:
    _ONE_TRANS[_a, _b] = 0.0


def viterbi_one_span(log_probs: np.ndarray) -> np.ndarray:
    """(T, A, 3) log-probabilities -> (T, A) tags holding exactly one span per attribute (its best):
    for an attribute known to have a value where the free decoding found none."""
    T, A, _ = log_probs.shape
    emit = log_probs[:, :, _ONE_EMIT]  # (T, A, 4)
    score = emit[0] + np.array([0.0, 0.0, _NEG, _NEG])
    back = np.zeros((T, A, 4), dtype=np.int64)
    for t in range(1, T):
        cand = score[:, :, None] + _ONE_TRANS[None]
        back[t] = cand.argmax(1)
        score = cand.max(1) + emit[t]
    score[:, 0] += _NEG  # must have entered the span
    states = np.zeros((T, A), dtype=np.int64)
    states[-1] = score.argmax(-1)
    cols = np.arange(A)
    for t in range(T - 1, 0, -1):
        states[t - 1] = back[t, cols, states[t]]
    return _ONE_EMIT[states]


def decode_spans(
    probs: np.ndarray,
    attributes: Sequence[str],
    allowed: Sequence[bool] | None = None,
    required: Sequence[bool] | None = None,
    transitions: Transitions | None = None,
) -> list[tuple[str, int, int, float]]:
    """(T, A, 3) probabilities of one product's tokens -> (attribute, first, last, confidence) per
    span, confidence = mean of 1 - p(O) over the span's tokens. Layers not `allowed` (attributes
    out of range) give no spans; `required` ones get their best single span where the free
    decoding found none. `transitions`: a CRF's, for its Viterbi."""
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    tags = viterbi(logp, transitions)
    if required is not None and len(probs):
        empty = np.asarray(required, dtype=bool) & ~(tags != O).any(0)
        if empty.any():
            tags[:, empty] = viterbi_one_span(logp[:, empty])
    out = []
    for a, attr in enumerate(attributes):
        if allowed is not None and not allowed[a]:
            continue
        for i, j in spans_from_tags(tags[:, a]):
            out.append((attr, i, j, float(np.mean(1.0 - probs[i : j + 1, a, O]))))
    return out
