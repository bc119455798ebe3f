"""Backoff (exponential, full jitter, capped) for reconnects, and the circuit breaker state machine."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_PROBES", "Backoff", "CircuitBreaker", "CircuitState", "set_testing"]

#: Probes of one open circuit running at once, at most (each is one connect or ping).
MAX_PROBES = 3

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


CircuitState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class CircuitBreaker:
    """Closed until ``threshold`` consecutive failures; then open, probed every ``probe_interval``.

    ``open``: callers are refused at once, no I/O reaches the backend but one probe per
    ``probe_interval`` (jittered +-10%, so replicas do not probe in step). ``half_open``: a probe is
    in flight; callers are still refused, and the first success closes the circuit. The probe cadence
    is a setting of its own, not the reconnect backoff: a long outage must not stretch the time
    between the backend coming back and the service serving again (HikariCP and resilience4j make
    the same split). While callers keep being refused, :meth:`hurry` brings the next probe forward to
    a fifth of the interval after the last one started, even while that one is still in flight (a
    connect to a server that is starting, or through a saturated event loop, can take a while): a
    busy service finds its backend back about as soon as glue that connects on every request would,
    yet never runs more than ``MAX_PROBES`` probes at once nor starts more than five per interval.
    Pure state: the owner runs each probe's I/O, reports its outcome, then calls :meth:`probe_ended`.
    """

    threshold: int
    probe_interval: float = 0.25
    failures: int = 0
    state: CircuitState = "closed"
    next_probe: float = 0.0
    probes: int = 0  # probes started since the circuit last opened
    in_flight: int = 0  # probes running now
    last_probe: float = float("-inf")  # when the last probe started

    @property
    def is_open(self) -> bool:
        """True while callers must be refused (open or half-open)."""
        return self.state != "closed"

    def record_success(self) -> bool:
        """Reset the failure count; True when this closed an open circuit."""
        was_open = self.state != "closed"
        self.failures = 0
        self.state = "closed"
        self.probes = 0
        return was_open

    def record_failure(self, now: float) -> bool:
        """Count one failure; True when this opened a closed circuit."""
        self.failures += 1
        if self.state == "closed" and self.failures >= self.threshold:
            self.state = "open"
            self.probes = 0
            self._schedule(now)
            return True
        return False

    def begin_probe(self, now: float) -> bool:
        """True (and half-open) when a probe may start now; the caller runs it, reports its outcome,
        then calls :meth:`probe_ended`. The next one is then due one interval later (or hurried)."""
        if self.state == "closed" or now < self.next_probe or self.in_flight >= MAX_PROBES:
            return False
        self.state = "half_open"
        self.probes += 1
        self.in_flight += 1
        self.last_probe = now
        self._schedule(now)
        return True

    def probe_ended(self) -> None:
        """A probe finished (its success or failure already recorded)."""
        self.in_flight = max(0, self.in_flight - 1)
        if self.state == "half_open" and not self.in_flight:
            self.state = "open"  # every probe failed: the next one is already scheduled

    def hurry(self, now: float) -> bool:
        """A caller was refused: probe sooner (see above); True when the next probe moved earlier."""
        if self.state == "closed":
            return False
        soonest = max(now, self.last_probe + self.probe_interval / 5)
        if soonest >= self.next_probe:
            return False
        self.next_probe = soonest
        return True

    def retry_after(self, now: float) -> float:
        """Seconds until a caller may expect the next probe's outcome (0.0 when closed)."""
        if self.state == "closed":
            return 0.0
        # never 0: a probe due now still takes a round trip to tell
        return max(self.probe_interval / 5, self.next_probe - now)

    def _schedule(self, now: float) -> None:
        delay = 0.0 if _testing else self.probe_interval * random.uniform(0.9, 1.1)
        self.next_probe = now + delay
