"""Backoff (exponential, full jitter, capped) and the circuit breaker's transitions."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from poolwarden.retry import MAX_PROBES, Backoff, CircuitBreaker, set_testing


@pytest.fixture
def seeded() -> Iterator[None]:
    """Make the jitter reproducible without leaking the seed into other tests."""
    state = random.getstate()
    random.seed(20240611)
    try:
        yield
    finally:
        random.setstate(state)


@pytest.mark.usefixtures("seeded")
@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 6, 7, 50, 10_000])
def test_backoff_delay_is_full_jitter_below_the_capped_exponential(attempt: int) -> None:
    """Each delay is uniform in [0, min(wait_max, wait_initial * 2**attempt)]."""
    backoff = Backoff(wait_initial=0.1, wait_max=10.0)
    cap = min(10.0, 0.1 * 2**min(attempt, 40))
    samples = [backoff.delay(attempt) for _ in range(2000)]
    assert all(0.0 <= s <= cap for s in samples)
    assert min(samples) < 0.05 * cap  # full jitter reaches down to zero...
    assert max(samples) > 0.95 * cap  # ...and up to the cap


def test_backoff_never_exceeds_wait_max_for_huge_attempts() -> None:
    """The exponent is bounded, so very late attempts neither overflow nor pass wait_max."""
    backoff = Backoff(wait_initial=1.0, wait_max=2.0)
    assert all(backoff.delay(10**9) <= 2.0 for _ in range(100))


def test_testing_switch_zeroes_every_delay() -> None:
    """set_testing(True) makes every delay 0 until switched off again."""
    backoff = Backoff(wait_initial=1.0, wait_max=5.0)
    set_testing(True)
    try:
        assert {backoff.delay(n) for n in range(10)} == {0.0}
    finally:
        set_testing(False)
    assert any(backoff.delay(3) > 0 for _ in range(10))


def test_no_backoff_fixture_zeroes_delays(no_backoff: None) -> None:
    """The no_backoff pytest fixture zeroes retry delays for the test."""
    assert Backoff(1.0, 2.0).delay(5) == 0.0


def test_breaker_stays_closed_below_the_threshold() -> None:
    """Fewer consecutive failures than the threshold leave the circuit closed."""
    breaker = CircuitBreaker(3, 0.25)
    assert breaker.record_failure(0.0) is False
    assert breaker.record_failure(0.0) is False
    assert breaker.state == "closed"
    assert breaker.retry_after(0.0) == 0.0


def test_breaker_opens_at_the_threshold_and_schedules_a_probe_one_interval_away() -> None:
    """The threshold-th failure opens the circuit, with the next probe one probe_interval (+-10%) away."""
    breaker = CircuitBreaker(3, 0.25)
    breaker.record_failure(100.0)
    breaker.record_failure(100.0)
    assert breaker.record_failure(100.0) is True
    assert breaker.state == "open"
    assert breaker.is_open
    assert 100.0 + 0.225 <= breaker.next_probe <= 100.0 + 0.275
    assert breaker.retry_after(100.0) == pytest.approx(breaker.next_probe - 100.0)
    assert breaker.retry_after(breaker.next_probe + 5) == 0.05  # due: about one round trip away


@pytest.mark.usefixtures("seeded")
def test_probe_cadence_does_not_grow_with_the_outage() -> None:
    """However many probes failed, the next one is still one probe_interval away: a long outage
    never delays recovery (issue 8.1; it used to follow the reconnect backoff, up to 10 s)."""
    breaker = CircuitBreaker(1, 0.25)
    now = 0.0
    breaker.record_failure(now)
    for _ in range(1000):
        now = breaker.next_probe
        assert breaker.begin_probe(now)
        assert breaker.state == "half_open"
        assert breaker.record_failure(now + 0.01) is False
        breaker.probe_ended()
        assert breaker.is_open
        assert not breaker.begin_probe(now + 0.01)  # open again: the next probe is one interval away
        assert 0.225 <= breaker.next_probe - now <= 0.275


def test_half_open_admits_probes_only_when_due_and_closes_on_success() -> None:
    """A probe starts only when due; the first success closes the circuit."""
    breaker = CircuitBreaker(1, 0.25)
    breaker.record_failure(0.0)
    assert breaker.begin_probe(0.0) is False  # not due yet
    start = breaker.next_probe
    assert breaker.begin_probe(start) is True
    assert breaker.begin_probe(start + 0.01) is False  # the next one is an interval away
    assert breaker.retry_after(start + 0.01) == pytest.approx(breaker.next_probe - start - 0.01)
    assert breaker.record_success() is True
    breaker.probe_ended()
    assert breaker.state == "closed"


def test_refused_callers_hurry_overlapping_probes_up_to_the_cap() -> None:
    """A refused caller brings the next probe forward to probe_interval / 5 after the last one
    started, even while that one is in flight, and never beyond MAX_PROBES at once."""
    breaker = CircuitBreaker(1, 0.25)
    breaker.record_failure(0.0)
    t = breaker.next_probe
    started = []
    for _ in range(MAX_PROBES):
        assert breaker.hurry(t) or breaker.next_probe <= t
        t = max(t, breaker.next_probe)
        assert breaker.begin_probe(t)
        started.append(t)
        t += 0.05
    assert started == pytest.approx([started[0] + 0.05 * i for i in range(MAX_PROBES)])
    assert breaker.in_flight == MAX_PROBES
    breaker.hurry(t)
    assert not breaker.begin_probe(t + 1)  # at the cap
    breaker.record_failure(t)
    breaker.probe_ended()
    assert breaker.state == "half_open"  # others still in flight
    for _ in range(MAX_PROBES - 1):
        breaker.probe_ended()
    assert (breaker.state, breaker.in_flight) == ("open", 0)


def test_testing_switch_makes_probes_due_at_once() -> None:
    """With the testing switch on, a probe is due immediately (tests never sleep)."""
    set_testing(True)
    try:
        breaker = CircuitBreaker(1, 5.0)
        breaker.record_failure(10.0)
        assert breaker.next_probe == 10.0
    finally:
        set_testing(False)


def test_success_closes_the_circuit_and_resets_the_count() -> None:
    """A success closes an open circuit (reported once) and forgets earlier failures."""
    breaker = CircuitBreaker(2, 0.25)
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    assert breaker.is_open
    assert breaker.record_success() is True
    assert breaker.record_success() is False
    assert (breaker.failures, breaker.state) == (0, "closed")


def test_only_consecutive_failures_open_the_circuit() -> None:
    """A success between failures resets the count."""
    breaker = CircuitBreaker(2, 0.25)
    breaker.record_failure(0.0)
    breaker.record_success()
    assert breaker.record_failure(0.0) is False
    assert not breaker.is_open
