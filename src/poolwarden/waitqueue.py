"""The queue of callers waiting for a connection: arrival order, deadlines in a heap, adaptive LIFO.

Every operation costs the same at 50,000 waiters as at 10: arrival order is a deque, deadlines a
second deque while they come in order (one ``acquire_timeout``: always; O(1)) and a binary heap of
``(deadline, id, waiter)`` entries (compared in C) for those that do not, and a waiter that leaves
(cancelled, timed out, served) is only marked, never searched for. Marked entries are dropped when
they reach an end of the deque or the top of the heap, and both are rebuilt once the dead outnumber
the living (amortised O(1)).
Both ends of the deque are always live waiters, so the deque's own truthiness says "someone waits"
and the pool's hot path keeps its single C-level test.

Queue control follows CoDel (RFC 8289: judge the queue by the time spent in it, not by its length)
and Facebook's adaptive LIFO ("Fail at Scale", 2015): when the oldest waiter has been older than
``target`` since the queue formed and, over a whole ``interval`` after the one that formed it,
more callers arrived than left (by 10% and a margin), the queue has piled up by half what it held
when it formed, and it holds more than the pool serves in an interval, demand outruns the pool -
more waiting adds latency, not throughput - so the newest waiter is served first (its client is
still there) and the oldest are shed: when their deadline comes before the queue could drain at
the measured rate, or when room is needed at the bound. (CoDel's own rule - shed whoever has waited
longer than ``interval`` - is not applied: it refused most of a half-second burst that FIFO serves
within a second, and the bound already keeps a sustained overload's queue, its memory and its
oldest waiters' wait short.) It is first come, first served again at the end of an interval in
which the queue did not grow, when it holds no more than an interval of work, or as soon as it
drains (empty, or its oldest waiter younger than ``target``). A queue that stands without growing
(a closed loop of workers, each coming back once served, even after the burst that formed it) stays
first come, first served and is never shed: FIFO serves it within the wait bound.

Nothing here reads a clock: every method takes ``now``, so the controller is tested on a fake one.
"""

from __future__ import annotations

import asyncio
import copy
from bisect import bisect_left as _bisect
from collections import deque
from heapq import heapify, heappop, heappush
from typing import Any, Generic, Literal, TypeVar

from poolwarden.observe.stats import Histogram

__all__ = ["BATCH", "QUEUE_PER_CONNECTION", "WaitQueue", "Waiter", "fail_in_batches"]

T = TypeVar("T")
QueueMode = Literal["fifo", "lifo"]

#: Waiters failed (timed out, shed, refused at close) per event-loop iteration: each one wakes a
#: task, and 50,000 tasks woken in one iteration stall the loop for seconds.
BATCH = 256
#: ``max_waiting=None`` bounds the queue at this many waiters per connection of ``max_size``.
QUEUE_PER_CONNECTION = 20
_SLACK = 64  # dead entries tolerated before a rebuild is considered
#: An interval shows growth when more than this many callers, and 10% more, came than left: a
#: closed loop whose connections stall (nobody served while a few holders come back) is not overload.
_GROWTH_MARGIN = 2


class Waiter(Generic[T]):
    """A caller queued for a connection: its future and when it gives up.

    ``deadline - limit`` is when it started waiting.
    """

    __slots__ = ("deadline", "fut", "limit", "queued")

    def __init__(self, fut: asyncio.Future[T], deadline: float, limit: float) -> None:
        self.fut = fut
        self.deadline = deadline
        self.limit = limit
        self.queued = False  # counted in WaitQueue.live; whoever clears it takes it off the count


class WaitQueue(deque[Waiter[T]]):
    """Waiters in arrival order (the deque itself) plus their deadlines (``heap``).

    Use :meth:`push`, :meth:`take`, :meth:`discard`, :meth:`expire`, :meth:`shed`, :meth:`take_all`
    only: ``len()`` also counts waiters marked gone in the middle, :attr:`live` does not.
    """

    __slots__ = ("_arrived", "_base", "_departed", "_epoch", "_excess", "_forming", "_rate",
                 "_trend", "_trend_end", "_window_served", "_window_start", "adaptive", "good_at",
                 "heap", "inorder", "interval", "lifo_switches", "live", "mode", "shed_counts", "sojourn",
                 "target")

    def __init__(self, *, adaptive: bool = True, target: float = 0.005, interval: float = 0.1) -> None:
        super().__init__()
        self.heap: list[tuple[float, int, Waiter[T]]] = []
        # waiters whose deadline came in order (not before the previous one's): with one
        # acquire_timeout, all of them. Sorted already, so they skip the heap (a push and its
        # rebuilds cost more than the rest of a hand-off)
        self.inorder: deque[Waiter[T]] = deque()
        self.live = 0
        self.adaptive = adaptive
        self.target = target
        self.interval = interval
        self.mode: QueueMode = "fifo"
        self.good_at = 0.0  # the last moment the queue was seen empty or its oldest under target
        self.lifo_switches = 0
        self.shed_counts: dict[str, int] = {"full": 0, "overload": 0, "timeout": 0}
        self.sojourn = Histogram()  # time in the queue of the waiters that were served
        self._rate = 0.0  # served per second while callers queued (EWMA over windows)
        self._window_start = 0.0
        self._window_served = 0
        # per interval since good_at: callers that came (refused ones too: demand), and callers that
        # left (served, gave up, timed out; not the shed). A queue that stands but does not grow (a
        # closed loop: each caller that leaves comes back) is left first come, first served
        self._arrived = 0
        self._departed = 0
        self._trend_end = 0.0  # end of the current interval
        self._forming = True  # the first interval after good_at: a burst forming the queue, not a trend
        self._trend = 0  # verdict of the last whole interval: 1 grew, -1 did not grow, 0 none yet
        self._base = 0  # waiters when the forming interval ended
        self._excess = 0  # callers that came minus callers that left since then
        self._epoch = 0.0  # the good_at the interval bookkeeping above was started from

    # -- in and out ------------------------------------------------------------------------------

    def push(self, waiter: Waiter[T], now: float, *, front: bool = False) -> None:
        """Queue ``waiter``; ``front`` puts it first (a caller that keeps its place in line).

        The switch to LIFO is decided where the mode is used (:meth:`take`, :meth:`make_room`,
        :meth:`steer`): a push is on every queued acquire and must stay cheap."""
        if not self.live:
            self._good(now)
            if now - self._window_start > 1.0:  # the queue was empty: no drain was measured
                self._window_start, self._window_served = now, 0
        elif now >= self._trend_end and self.adaptive:  # an interval ended: judge it before counting
            self._control(now)
        waiter.queued = True
        self.live += 1
        if front:  # an earlier caller that keeps its place, not a new one
            self.appendleft(waiter)
        else:
            self._arrived += 1
            self.append(waiter)
        lane = self.inorder
        if not front and (not lane or waiter.deadline >= lane[-1].deadline):
            lane.append(waiter)
        else:
            heappush(self.heap, (waiter.deadline, id(waiter), waiter))
        if self.adaptive:  # only the cheap half of the controller: is the queue still good?
            oldest = self[0]
            if now - oldest.deadline + oldest.limit <= self.target:
                self.good_at = now  # the interval bookkeeping restarts from it in _control
                self.mode = "fifo"

    def take(self, now: float) -> Waiter[T] | None:
        """The waiter to serve next (oldest first; newest first while the queue stands), or None.

        Flat on purpose: it runs on every hand-off of a returned connection to a waiter."""
        if self.adaptive and self:
            oldest = self[0]
            if now - oldest.deadline + oldest.limit <= self.target:  # good: _control's first half
                self.good_at = now  # the interval bookkeeping restarts from it in _control
                self.mode = "fifo"
            elif now >= self._trend_end:  # only at an interval's end can the mode change
                self._control(now)
        lifo = self.mode == "lifo"
        while self:
            waiter = self.pop() if lifo else self.popleft()
            if not waiter.queued:
                continue
            waiter.queued = False
            self.live -= 1
            if waiter.fut.done():  # cancelled, its task not yet run to take it off: it left
                self._departed += 1
                continue
            sojourn = now - waiter.deadline + waiter.limit
            hist = self.sojourn
            hist.counts[_bisect(hist.bounds, sojourn)] += 1
            hist.count += 1
            hist.sum += sojourn if sojourn > 0.0 else 0.0
            self._departed += 1
            self._window_served += 1
            if now - self._window_start >= 0.5:
                self._close_window(now)
            if self.live:
                lane = self.inorder
                if lifo:
                    while not self[-1].queued:
                        self.pop()
                    while lane and not lane[-1].queued:
                        lane.pop()
                else:
                    while not self[0].queued:
                        self.popleft()
                    while lane and not lane[0].queued:
                        lane.popleft()
                bloat = 2 * self.live + _SLACK
                if len(self) > bloat or len(self.heap) > bloat or len(lane) > bloat:
                    self._tidy(now, steer=False)
            else:
                self._tidy(now)
            return waiter
        self._drained(now)
        return None

    def steer(self, now: float) -> QueueMode:
        """The mode as of ``now`` (the controller runs on use; this is for stats)."""
        if self.adaptive:
            self._control(now)
        return self.mode

    def discard(self, waiter: Waiter[T], now: float) -> bool:
        """Take a waiter that gave up off the count; O(1). False when it had already left."""
        if not waiter.queued:
            return False
        waiter.queued = False
        self.live -= 1
        self._departed += 1
        self._tidy(now)
        return True

    def expire(self, now: float, budget: int = BATCH) -> list[Waiter[T]]:
        """Up to ``budget`` waiters whose deadline has passed, taken off the queue, to be failed."""
        heap, lane = self.heap, self.inorder
        out: list[Waiter[T]] = []
        pops = 0
        while pops < budget * 4 and len(out) < budget:
            if lane and (not heap or lane[0].deadline <= heap[0][0]):
                if lane[0].deadline > now:
                    break
                waiter = lane.popleft()
            elif heap and heap[0][0] <= now:
                waiter = heappop(heap)[2]
            else:
                break
            pops += 1
            if waiter.queued:
                waiter.queued = False
                self.live -= 1
                self._departed += 1
                if not waiter.fut.done():
                    out.append(waiter)
        self.shed_counts["timeout"] += len(out)
        self._tidy(now)
        return out

    def shed(self, now: float, rate: float, budget: int = BATCH) -> list[Waiter[T]]:
        """While the queue stands (LIFO), the oldest waiters that will not be served: those whose
        deadline comes before the queue could drain at ``rate`` a second (none while no rate is known)."""
        out: list[Waiter[T]] = []
        while self and self.mode == "lifo" and len(out) < budget:
            oldest = self[0]
            if rate <= 0.0 or oldest.deadline - now >= self.live / rate:
                break
            self.popleft()
            oldest.queued = False
            self.live -= 1
            if not oldest.fut.done():
                out.append(oldest)
            self._tidy(now)
        self.shed_counts["overload"] += len(out)
        return out

    def make_room(self, now: float) -> Waiter[T] | None:
        """At the bound while the queue stands: the oldest waiter gives its place to a newcomer
        (it would be served last anyway). None in FIFO mode: there the newcomer is refused."""
        if self.adaptive:
            self._control(now)
        if self.mode != "lifo":
            return None
        while self:
            oldest = self.popleft()
            if oldest.queued:
                oldest.queued = False
                self.live -= 1
                self._tidy(now)
                if not oldest.fut.done():
                    self.shed_counts["overload"] += 1
                    return oldest
        return None

    def take_all(self, now: float) -> list[Waiter[T]]:
        """Every waiter still queued, taken off (to be failed: the pool closes or its circuit opened)."""
        out = [w for w in self if w.queued and not w.fut.done()]
        for waiter in self:
            waiter.queued = False
        self.clear()
        self.heap.clear()
        self.inorder.clear()
        self.live = 0
        self._drained(now)
        return out

    def refused(self) -> None:
        """Count a caller refused at once because the queue was full (demand all the same)."""
        self.shed_counts["full"] += 1
        self._arrived += 1

    # -- what the pool asks ----------------------------------------------------------------------

    def next_due(self) -> float:
        """When the reaper must run next: the earliest deadline (inf when nobody waits)."""
        heap, lane = self.heap, self.inorder
        while heap and not heap[0][2].queued:
            heappop(heap)
        while lane and not lane[0].queued:
            lane.popleft()
        due = heap[0][0] if heap else float("inf")
        return min(due, lane[0].deadline) if lane else due

    def next_shed(self, now: float) -> float:
        """While the queue stands, when the oldest waiter's deadline can no longer be met at the
        measured drain rate (else inf)."""
        rate = self.drain_rate(now) if self.mode == "lifo" and self else 0.0
        if rate <= 0.0:
            return float("inf")
        return self[0].deadline - self.live / rate

    def drain_rate(self, now: float) -> float:
        """Waiters served per second, measured while callers queued (0.0 before any measure)."""
        if self._rate:
            return self._rate
        elapsed = now - self._window_start  # the first window, not yet closed
        return self._window_served / elapsed if elapsed > 0.0 and self._window_served else 0.0

    def oldest_sojourn(self, now: float) -> float:
        return now - (self[0].deadline - self[0].limit) if self else 0.0

    # -- bookkeeping -----------------------------------------------------------------------------

    def _close_window(self, now: float) -> None:
        sample = self._window_served / (now - self._window_start)
        self._rate = sample if self._rate == 0.0 else 0.7 * self._rate + 0.3 * sample
        self._window_start, self._window_served = now, 0

    def _tidy(self, now: float, *, steer: bool = True) -> None:
        """Keep both ends live, rebuild when the dead outnumber the living, steer the mode.

        Served waiters stay in the heap until the reaper looks at its top (``next_due``) or a
        rebuild: dropping each one at once would cost a heap pop per hand-off."""
        while self and not self[0].queued:
            self.popleft()
        while self and not self[-1].queued:
            self.pop()
        live = self.live
        if not live:
            self.clear()
            self.heap.clear()
            self.inorder.clear()
            self._drained(now)
            return
        if len(self) > 2 * live + _SLACK:
            kept = [w for w in self if w.queued]
            self.clear()
            self.extend(kept)
        heap = self.heap
        if len(heap) > 2 * live + _SLACK:
            heap[:] = [entry for entry in heap if entry[2].queued]
            heapify(heap)
        lane = self.inorder
        if len(lane) > 2 * live + _SLACK:
            kept = [w for w in lane if w.queued]  # still in deadline order
            lane.clear()
            lane.extend(kept)
        if steer and self.adaptive:
            self._control(now)

    def _drained(self, now: float) -> None:
        self._good(now)
        self.mode = "fifo"

    def _good(self, now: float) -> None:
        self.good_at = self._epoch = now
        self._arrived = self._departed = 0
        self._trend_end = now + self.interval
        self._forming = True
        self._trend = 0
        self._excess = 0

    def _control(self, now: float) -> None:
        """LIFO while demand outruns the pool; FIFO otherwise.

        CoDel's test on the oldest waiter (above target since good_at), then, judged once per
        interval: LIFO when, in the last whole interval after the one that formed the queue, more
        callers came than left (by 10% and more than _GROWTH_MARGIN), the queue has grown by half
        what it held when it formed (a closed loop jitters around its population, demand above
        what the pool serves piles up), and it holds more than the pool serves in an interval
        (FIFO would not serve it within the sojourn limit that LIFO sheds at). Back to FIFO at the
        end of an interval in which the queue did not grow, or when it holds no more than an
        interval of work. A closed loop (each caller served comes back) never grows past its
        forming burst, and is never shed; a burst is not a trend."""
        if not self.live:
            self._drained(now)
            return
        oldest = self[0]
        if now - oldest.deadline + oldest.limit <= self.target:
            self._good(now)
            self.mode = "fifo"
            return
        if self._epoch != self.good_at:  # take() or push() saw the queue good since
            self._good(self.good_at)
        if now < self._trend_end:
            return
        arrived, departed = self._arrived, self._departed
        self._arrived = self._departed = 0
        end = self._trend_end + self.interval
        self._trend_end = end if end > now else now + self.interval
        if self._forming:  # the burst that formed the queue says nothing of the demand
            self._forming = False
            self._base = self.live
            return
        self._excess += arrived - departed
        if arrived > 1.1 * departed + _GROWTH_MARGIN and self._excess > self._base // 2:
            self._trend = 1
        else:
            self._trend = -1 if arrived <= departed else 0
        work = self.drain_rate(now) * self.interval  # what the pool serves in an interval
        if self.mode == "fifo":
            if self._trend == 1 and self.live > work:
                self.mode = "lifo"
                self.lifo_switches += 1
        elif self._trend == -1 or self.live <= work:
            self.mode = "fifo"


def fail_in_batches(loop: asyncio.AbstractEventLoop, waiters: list[Waiter[Any]],
                    error: BaseException, start: int = 0) -> None:
    """Fail ``waiters`` with ``error``, :data:`BATCH` per loop iteration (each one wakes a task).

    Each later batch gets a copy: a future keeps the traceback its exception has when it is set, and
    the shared one grows a frame chain each time a woken task raises it."""
    end = start + BATCH
    exc = copy.copy(error) if start else error
    for waiter in waiters[start:end]:
        if not waiter.fut.done():
            waiter.fut.set_exception(exc)
    if end < len(waiters):
        loop.call_soon(fail_in_batches, loop, waiters, error, end)
