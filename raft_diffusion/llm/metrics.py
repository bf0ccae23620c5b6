"""Text diversity and length metrics over a set of responses (pure Python).

Distinct-n (Li et al., 2016): the number of distinct word n-grams over all responses divided by
the total number of word n-grams (words = whitespace-separated, lower-cased); 0 when there are none.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence


def ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / total n-grams over ``texts``, in [0, 1]."""
    grams = [g for t in texts for g in ngrams(t.lower().split(), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def response_metrics(texts: Sequence[str], token_lengths: Sequence[int], finished: Sequence[bool] | None = None
                     ) -> dict[str, Any]:
    """response_tokens (mean token count), response_words (mean word count), distinct_1, distinct_2,
    and finished_fraction (share that ended on eos / a stop string) when ``finished`` is given."""
    out: dict[str, Any] = {
        "response_tokens": statistics.fmean(token_lengths) if token_lengths else 0.0,
        "response_words": statistics.fmean(len(t.split()) for t in texts) if texts else 0.0,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }
    if finished is not None:
        out["finished_fraction"] = statistics.fmean(bool(f) for f in finished) if finished else 0.0
    return out
