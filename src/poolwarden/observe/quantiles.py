"""Quantiles interpolated inside histogram buckets, the way Prometheus's ``histogram_quantile`` does.

A bucket bound alone says "p99 <= 5s" for any wait between 1 and 5 seconds; interpolating linearly
inside the bucket that holds the quantile gives a number that moves with the data. The first bucket
starts at 0; a quantile that falls in the +Inf bucket is reported as the last finite bound (nothing
better is known), and :func:`interpolate` says so through ``beyond``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["interpolate"]


def interpolate(bounds: Sequence[float], counts: Sequence[int], q: float) -> tuple[float, bool]:
    """The ``q`` quantile (0..1) of non-cumulative ``counts`` (one more than ``bounds``, the last +Inf).

    Returns ``(seconds, beyond)``: ``beyond`` is True when the quantile lies past the last finite bound
    (then ``seconds`` is that bound). ``(0.0, False)`` for an empty histogram.
    """
    total = sum(counts)
    if total <= 0 or not bounds:
        return 0.0, False
    rank = min(max(q, 0.0), 1.0) * total
    seen = 0
    lower = 0.0
    for bound, n in zip(bounds, counts, strict=False):
        if n > 0 and seen + n >= rank:
            return lower + (bound - lower) * max(rank - seen, 0.0) / n, False
        seen += n
        lower = bound
    return float(bounds[-1]), True
