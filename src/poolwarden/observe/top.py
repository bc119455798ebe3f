"""What ``poolwarden top`` draws: a frame of ``/poolwarden/stats`` read defensively, laid out in 80 columns.

Everything here treats the service's answer as hostile: it may be garbled, truncated, huge, or written
by someone who wants the operator's terminal. So a value from the network is never markup and never
printed raw: names are stripped of control, format (bidi) and combining characters and cut to their
column; numbers must be finite, non-negative, below a bound, and not booleans, or they show as ``?``;
bars are a fixed width whatever the counts; at most :data:`MAX_POOLS` pools are drawn; a body larger
than :data:`MAX_BODY` or not a JSON object of objects is one clear line, :class:`Garbage`.

Quantiles are interpolated inside the buckets (:mod:`~poolwarden.observe.quantiles`), over the last
interval once two frames exist. Pure functions returning plain lines: the CLI only prints them.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from poolwarden.observe.quantiles import interpolate

__all__ = ["MAX_BODY", "MAX_POOLS", "WIDTH", "Frame", "Garbage", "cells", "clean", "parse", "render"]

WIDTH = 80
MAX_POOLS = 50
MAX_BODY = 16 * 1024 * 1024
_MAX_NUMBER = 10**12
_MAX_BUCKETS = 64
_BAR = 10
# name, state, bar, used/max, idle, queue, acq/s, p50, p99, errors: 79 columns with the separators
_HEAD = ("POOL", "STATE", "CONNS", "USE/MAX", "IDLE", "QUEUE", "ACQ/S", "P50", "P99", "ERR")
_WIDTHS = (12, 9, _BAR, 7, 4, 5, 6, 6, 6, 5)


class Garbage(ValueError):
    """The answer is not poolwarden stats; the message is one line, safe to print."""


@dataclass(frozen=True, slots=True)
class _Hist:
    bounds: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Pool:
    name: str
    state: str
    circuit: str
    ready: bool | None
    numbers: Mapping[str, int | None]
    errors: int | None
    wait: _Hist | None


@dataclass(frozen=True, slots=True)
class Frame:
    """One validated reading: at most MAX_POOLS pools, and how many more the service has."""

    at: float
    pools: Mapping[str, _Pool]
    hidden: int = 0
    extra: Mapping[str, object] = field(default_factory=dict)


def _cell(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def cells(text: str) -> int:
    """Terminal cells of ``text`` (already cleaned): wide East Asian characters take two."""
    return sum(_cell(ch) for ch in text)


def clean(text: object, width: int) -> str:
    """``text`` as at most ``width`` terminal cells of printable characters, cut with ``…``."""
    out: list[str] = []
    used = 0
    for ch in str(text)[: width * 4 + 1]:
        if unicodedata.category(ch)[0] in "CMZ" and ch != " ":
            continue  # control, format (bidi overrides), surrogates, combining marks, line separators
        out.append(ch)
        used += _cell(ch)
        if used > width:
            while out and used + 1 > width:
                used -= _cell(out.pop())
            out.append("…")
            break
    return "".join(out) or "?"


def _pad(text: str, width: int, right: bool = False) -> str:
    gap = " " * max(0, width - cells(text))
    return gap + text if right else text + gap


def _number(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not 0 <= value <= _MAX_NUMBER:
        return None
    return int(value)


def _hist(data: object) -> _Hist | None:
    if not isinstance(data, Mapping):
        return None
    bounds, counts = data.get("bounds"), data.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list):
        return None
    if not 0 < len(bounds) <= _MAX_BUCKETS or len(counts) != len(bounds) + 1:
        return None
    b: list[float] = []
    for x in bounds:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x <= 0 \
                or (b and x <= b[-1]) or x > 1e6:
            return None
        b.append(float(x))
    c = [_number(n) for n in counts]
    if any(n is None for n in c):
        return None
    return _Hist(tuple(b), tuple(n or 0 for n in c))


_NUMBERS = ("in_use", "idle", "connecting", "waiting", "max_size", "acquired")
_ERRORS = ("timeouts", "overloaded", "connect_errors")


def _pool(name: str, s: Mapping[str, Any]) -> _Pool:
    numbers = {key: _number(s.get(key)) for key in _NUMBERS}
    parts = [_number(s.get(key, 0)) for key in _ERRORS]
    discarded = s.get("discarded", {})
    if isinstance(discarded, Mapping):
        parts.extend(_number(v) for v in islice(discarded.values(), _MAX_BUCKETS))
    else:
        parts.append(None)
    errors = None if any(p is None for p in parts) else sum(p or 0 for p in parts)
    ready = s.get("ready")
    return _Pool(name=name, state=clean(s.get("state", "?"), 9), circuit=clean(s.get("circuit", "?"), 9),
                 ready=ready if isinstance(ready, bool) else None, numbers=numbers, errors=errors,
                 wait=_hist(s.get("wait_time")))


def parse(body: bytes | str, at: float | None = None) -> Frame:
    """Validate one answer of ``/poolwarden/stats``; raises :class:`Garbage` for anything else."""
    if len(body) > MAX_BODY:
        raise Garbage(f"the answer is larger than {MAX_BODY // (1024 * 1024)} MiB")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Garbage("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise Garbage("the answer is not a JSON object of pools")
    pools: dict[str, _Pool] = {}
    for name, s in islice(data.items(), MAX_POOLS):
        if not isinstance(s, dict):
            raise Garbage("the answer is not a JSON object of pools (a pool is not an object)")
        pools[name] = _pool(name, s)
    return Frame(time.monotonic() if at is None else at, pools, hidden=max(0, len(data) - MAX_POOLS))


def _short(n: float | None, width: int) -> str:
    if n is None:
        return "?"
    for div, unit in ((1, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        v = n / div
        text = f"{v:.0f}{unit}" if unit == "" and float(n).is_integer() else f"{v:.1f}{unit}"
        if len(text) > width:
            text = f"{v:.0f}{unit}"
        if len(text) <= width:
            return text
    return "?"


def _seconds(value: float, beyond: bool) -> str:
    if beyond:
        return ">" + _seconds(value, False)
    if value < 1e-3:
        return f"{value * 1e6:.0f}µs"
    if value < 1:
        return f"{value * 1e3:.3g}ms"
    return f"{value:.3g}s"


def _quantile(now: _Hist | None, before: _Hist | None, q: float) -> str:
    if now is None:
        return "?"
    counts = now.counts
    if before is not None and before.bounds == now.bounds and all(
            a >= b for a, b in zip(now.counts, before.counts, strict=True)):
        counts = tuple(a - b for a, b in zip(now.counts, before.counts, strict=True))
    if not sum(counts):
        return "-"
    return _seconds(*interpolate(now.bounds, counts, q))


def _bar(used: int | None, idle: int | None, connecting: int | None, maximum: int | None) -> str:
    if not maximum or used is None or idle is None or connecting is None:
        return "·" * _BAR
    cells = []
    left = _BAR
    for n in (used, idle, connecting):
        k = min(left, round(_BAR * min(n, maximum) / maximum))
        cells.append(k)
        left -= k
    return "█" * cells[0] + "▓" * cells[1] + "▒" * cells[2] + "·" * left


def _row(values: Sequence[str]) -> str:
    out = []
    for i, (text, width) in enumerate(zip(values, _WIDTHS, strict=True)):
        out.append(_pad(clean(text, width), width, right=i >= 3))
    return " ".join(out)


def render(frame: Frame, previous: Frame | None, source: str, error: str | None = None) -> list[str]:
    """The lines of one screen, each at most :data:`WIDTH` cells, with nothing but printable text."""
    stamp = time.strftime("%H:%M:%S")
    title = "poolwarden top "
    room = WIDTH - len(title) - len(stamp)
    lines = [title + _pad(clean(source, room - 1), room) + stamp, _row(_HEAD)]
    elapsed = frame.at - previous.at if previous is not None else 0.0
    for name, p in frame.pools.items():
        before = previous.pools.get(name) if previous is not None else None
        n = p.numbers
        if p.circuit == "open":
            state = "circ OPEN"
        elif p.state == "open":
            state = "ready" if p.ready in (True, None) else "not ready"
        else:
            state = p.state
        rate = "-"
        errors = p.errors
        if before is not None and elapsed > 0:
            a, b = n.get("acquired"), before.numbers.get("acquired")
            rate = _short(max(a - b, 0) / elapsed, 6) if a is not None and b is not None else "?"
            if errors is not None and before.errors is not None:
                errors = max(errors - before.errors, 0)
        use = f"{_short(n['in_use'], 3)}/{_short(n['max_size'], 3)}"
        lines.append(_row((
            name, state, _bar(n["in_use"], n["idle"], n["connecting"], n["max_size"]), use,
            _short(n["idle"], 4), _short(n["waiting"], 5), rate,
            _quantile(p.wait, before.wait if before else None, 0.5),
            _quantile(p.wait, before.wait if before else None, 0.99), _short(errors, 5))))
    if frame.hidden:
        lines.append(f"… and {frame.hidden} more pools (top shows the first {MAX_POOLS})")
    window = "last interval" if previous is not None else "since start"
    lines.append(clean(error, WIDTH) if error else
                 f"█ used ▓ idle ▒ connecting · free   wait P50/P99 and ERR: {window}")
    return lines
