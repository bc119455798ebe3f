"""Backoff (exponential, full jitter, capped) and the circuit breaker's transitions."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from poolwarden.retry import Backoff, CircuitBreaker, set_testing


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
        assert breaker.record_failure(now) is False
        assert breaker.is_open
        assert not breaker.begin_probe(now)  # open again: the next probe is one interval away
        assert 0.225 <= breaker.next_probe - now <= 0.275


def test_half_open_admits_one_probe_and_refuses_early_ones() -> None:
    """A probe is admitted only when due, and only one at a time (half-open)."""
    breaker = CircuitBreaker(1, 0.25)
    breaker.record_failure(0.0)
    assert breaker.begin_probe(0.0) is False  # not due yet
    assert breaker.begin_probe(breaker.next_probe) is True
    assert breaker.begin_probe(breaker.next_probe + 1) is False  # one in flight
    assert breaker.retry_after(breaker.next_probe) == 0.25  # honest: about one interval
    assert breaker.record_success() is True
    assert breaker.state == "closed"


def test_refused_callers_hurry_the_next_probe_to_a_fifth_of_the_interval() -> None:
    """A refused caller brings the next probe forward, to no sooner than probe_interval / 5 after
    the last one started: recovery follows demand, the probe rate stays bounded."""
    breaker = CircuitBreaker(1, 0.25)
    breaker.record_failure(0.0)
    assert breaker.begin_probe(breaker.next_probe)
    started = breaker.last_probe
    breaker.record_failure(started + 0.01)  # the probe failed fast: next one ~0.25 s later
    assert breaker.hurry(started + 0.02) is True
    assert breaker.next_probe == pytest.approx(started + 0.05)
    assert breaker.hurry(started + 0.03) is False  # already as soon as allowed
    assert breaker.hurry(started + 0.2) is False
    assert breaker.begin_probe(started + 0.05)
    assert breaker.hurry(started + 0.06) is False  # one in flight: nothing to hurry


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
