"""``poolwarden top`` survives any answer: hostile JSON never crashes it, never reaches the terminal
raw, never draws past 80 columns, and huge numbers or pool counts stay bounded in time and memory."""

from __future__ import annotations

import json
import math
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolwarden.observe import top

GOOD = {"state": "open", "circuit": "closed", "ready": True, "in_use": 3, "idle": 2, "connecting": 1,
        "waiting": 4, "max_size": 10, "acquired": 100, "timeouts": 1, "overloaded": 0, "connect_errors": 0,
        "discarded": {"broken": 2},
        "wait_time": {"bounds": [0.001, 0.005, 0.01], "counts": [50, 30, 15, 5], "count": 100, "sum": 0.5}}

HOSTILE_TEXT = st.one_of(
    st.text(),
    st.sampled_from(["[/]", "[bold red]x[/bold red]", "\x1b]52;c;ZXZpbA==\x07", "\x1b[2J\x1b[H",
                     "\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\", "\u202etxt.exe",
                     "a\u0301\u0301\u0301" * 30, "名前" * 50, "\r\n\t\x00", "\ufeff"]),
)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), HOSTILE_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                      st.dictionaries(HOSTILE_TEXT, inner, max_size=5)),
                      max_leaves=20)
POOL = (st.fixed_dictionaries({}, optional={key: VALUES for key in GOOD})
        | st.dictionaries(HOSTILE_TEXT, VALUES))
PAYLOAD = st.one_of(st.dictionaries(HOSTILE_TEXT, POOL, max_size=6), VALUES)


def assert_safe(lines: list[str]) -> None:
    for line in lines:
        assert top.cells(line) <= top.WIDTH, line
        for ch in line:
            assert unicodedata.category(ch)[0] not in "CM", repr(line)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PAYLOAD, PAYLOAD)
def test_any_json_renders_safely_or_is_one_clear_line(before: object, now: object) -> None:
    """Whatever the service answers, top draws safe lines of at most 80 cells or raises Garbage."""
    frames = []
    for payload in (before, now):
        try:
            body = json.dumps(payload, allow_nan=True)
        except (ValueError, UnicodeEncodeError):  # pragma: no cover - json.dumps of these works
            continue
        try:
            frames.append(top.parse(body.encode("utf-8", "surrogatepass"), at=len(frames) + 1.0))
        except top.Garbage as exc:
            reason = str(exc)
        else:
            continue
        assert "\n" not in reason
        assert len(reason) < 80
    previous = None
    for frame in frames:
        assert_safe(top.render(frame, previous, "http://svc/poolwarden/stats"))
        previous = frame


@given(st.text())
def test_clean_strips_everything_a_terminal_would_interpret(text: str) -> None:
    """No control, format or combining character survives, and the width is bounded."""
    out = top.clean(text, 12)
    assert top.cells(out) <= 12
    assert all(unicodedata.category(ch)[0] not in "CM" for ch in out)


def test_known_attacks_are_neutralised() -> None:
    """Markup, OSC 52 clipboard writes, hyperlinks, NaN and a billion in use: all drawn as plain text."""
    evil = dict(GOOD, in_use=10**9, idle=math.nan, waiting="[/]", state="[bold]x")
    body = json.dumps({"\x1b]52;c;ZXZpbA==\x07[/]": evil, "\x1b]8;;http://e/\x1b\\x": GOOD}).encode()
    lines = top.render(top.parse(body, at=1.0), None, "\x1b[2Jhttp://svc")
    assert_safe(lines)
    assert not any("\x1b" in line or "\x07" in line for line in lines)
    row = lines[2]
    assert "?" in row  # NaN idle and a string queue show as unknown


def test_hundreds_of_thousands_of_pools_are_bounded() -> None:
    """200k pools: parsed and drawn quickly, only MAX_POOLS rows, and a line saying how many are hidden."""
    body = json.dumps({f"p{i}": {"in_use": i} for i in range(200_000)}).encode()
    start = time.perf_counter()
    lines = top.render(top.parse(body, at=1.0), None, "http://svc")
    assert_safe(lines)
    assert time.perf_counter() - start < 5
    assert len(lines) == top.MAX_POOLS + 4
    assert "199950 more pools" in lines[-2]


def test_garbage_is_one_clear_line() -> None:
    """Not JSON, not an object, a pool that is not an object, or a huge body: Garbage with a short reason."""
    for body, reason in ((b"<html>", "not JSON"), (b"[1,2]", "not a JSON object"),
                         (b'{"db": 3}', "a pool is not an object"),
                         (b" " * (top.MAX_BODY + 1), "larger than")):
        with pytest.raises(top.Garbage, match=reason):
            top.parse(body)


def test_quantiles_are_interpolated_and_over_the_interval() -> None:
    """p50 and p99 are read inside the buckets, and over the last interval once two frames exist."""
    first = top.parse(json.dumps({"db": GOOD}), at=1.0)
    busy = dict(GOOD, acquired=300, wait_time=dict(GOOD["wait_time"], counts=[50, 30, 215, 5]))  # type: ignore[arg-type]
    second = top.parse(json.dumps({"db": busy}), at=2.0)
    row = top.render(second, first, "svc")[2].split()
    assert row[6:] == ["200", "7.5ms", "9.95ms", "0"], row  # acq/s, p50, p99, errors in the interval
