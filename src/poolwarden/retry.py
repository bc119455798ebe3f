"""Backoff (exponential, full jitter, capped) and the circuit breaker state machine."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "CircuitBreaker", "set_testing"]

_testing = False


def set_testing(on: bool = True) -> None:
    """Make every backoff delay zero, so users' tests never sleep on a retry."""
    global _testing
    _testing = on


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for attempt 0, 1, 2...: uniform in [0, min(wait_max, wait_initial * 2**attempt)]."""

    wait_initial: float = 0.1
    wait_max: float = 10.0

    def delay(self, attempt: int) -> float:
        if _testing:
            return 0.0
        cap = min(self.wait_max, self.wait_initial * (2 ** min(attempt, 32)))
        return random.uniform(0.0, cap)


@dataclass(slots=True)
class CircuitBreaker:
    """Opens after ``threshold`` consecutive failures; probes on a backoff schedule until one succeeds.

    Pure state: the pool asks it what to do and runs the I/O itself.
    """

    threshold: int
    backoff: Backoff
    failures: int = 0
    is_open: bool = False
    next_probe: float = 0.0
    _probe_attempt: int = field(default=0)

    def record_success(self) -> bool:
        """Reset the failure count; True when this closed an open circuit."""
        was_open = self.is_open
        self.failures = 0
        self.is_open = False
        self._probe_attempt = 0
        return was_open

    def record_failure(self, now: float) -> bool:
        """Count one failure; True when this opened the circuit."""
        self.failures += 1
        if self.is_open:
            self._schedule(now)
            return False
        if self.failures >= self.threshold:
            self.is_open = True
            self._probe_attempt = 0
            self._schedule(now)
            return True
        return False

    def retry_after(self, now: float) -> float:
        return max(0.0, self.next_probe - now) if self.is_open else 0.0

    def _schedule(self, now: float) -> None:
        # at least a tenth of the initial wait, so a dead backend is never probed in a busy loop
        floor = 0.0 if _testing else self.backoff.wait_initial / 10
        self.next_probe = now + max(floor, self.backoff.delay(self._probe_attempt))
        self._probe_attempt += 1
