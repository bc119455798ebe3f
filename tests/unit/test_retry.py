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
    """Fewer than ``threshold`` consecutive failures leave the circuit closed."""
    breaker = CircuitBreaker(3, Backoff(0.1, 1.0))
    assert breaker.record_failure(0.0) is False
    assert breaker.record_failure(1.0) is False
    assert not breaker.is_open
    assert breaker.retry_after(1.0) == 0.0


def test_breaker_opens_at_the_threshold_and_schedules_a_probe() -> None:
    """The threshold-th consecutive failure opens the circuit (reported once) with a future probe."""
    breaker = CircuitBreaker(3, Backoff(0.1, 1.0))
    opened = [breaker.record_failure(100.0) for _ in range(3)]
    assert opened == [False, False, True]
    assert breaker.is_open
    assert 100.0 + 0.01 <= breaker.next_probe <= 100.0 + 0.1
    assert breaker.retry_after(100.0) == pytest.approx(breaker.next_probe - 100.0)
    assert breaker.retry_after(breaker.next_probe + 5) == 0.0
    assert breaker.record_failure(100.5) is False  # a failed probe does not re-open
    assert breaker.is_open


@pytest.mark.usefixtures("seeded")
def test_failed_probes_back_off_exponentially_up_to_wait_max() -> None:
    """Each failed probe pushes the next one further out, within the backoff cap."""
    breaker = CircuitBreaker(1, Backoff(0.1, 0.8))
    caps = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
    widest = [0.0] * len(caps)
    for _ in range(300):
        breaker.record_success()
        breaker.record_failure(0.0)  # opens: probe 0
        for i, cap in enumerate(caps):
            if i:
                breaker.record_failure(0.0)
            assert 0.01 <= breaker.next_probe <= cap
            widest[i] = max(widest[i], breaker.next_probe)
    assert widest[3] > 0.4  # the range really grew


def test_probe_delay_has_a_floor_so_a_dead_backend_is_not_hammered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even a zero jitter draw waits a tenth of wait_initial before the next probe."""
    monkeypatch.setattr(random, "uniform", lambda a, b: 0.0)
    breaker = CircuitBreaker(1, Backoff(0.5, 2.0))
    breaker.record_failure(10.0)
    assert breaker.next_probe == pytest.approx(10.05)


def test_success_closes_the_circuit_and_resets_the_count() -> None:
    """A success closes an open circuit (reported once) and forgets earlier failures."""
    breaker = CircuitBreaker(2, Backoff(0.1, 1.0))
    breaker.record_failure(0.0)
    breaker.record_failure(0.0)
    assert breaker.is_open
    assert breaker.record_success() is True
    assert not breaker.is_open
    assert breaker.failures == 0
    assert breaker.retry_after(0.0) == 0.0
    assert breaker.record_success() is False


def test_only_consecutive_failures_open_the_circuit() -> None:
    """A success between failures restarts the count."""
    breaker = CircuitBreaker(2, Backoff(0.1, 1.0))
    for _ in range(5):
        assert breaker.record_failure(0.0) is False
        breaker.record_success()
    assert not breaker.is_open
