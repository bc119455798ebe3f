"""WaitQueue on a fake clock: arrival order, deadlines, adaptive LIFO, shedding, O(1) leaving."""

from __future__ import annotations

import asyncio

from poolwarden.waitqueue import BATCH, Waiter, WaitQueue, fail_in_batches

LIMIT = 10.0


def waiter(at: float, limit: float = LIMIT) -> Waiter[int]:
    """A waiter that started waiting at fake time ``at``."""
    return Waiter(asyncio.get_running_loop().create_future(), at + limit, limit)


def queue(**kwargs: float) -> WaitQueue[int]:
    return WaitQueue(target=kwargs.get("target", 0.005), interval=kwargs.get("interval", 0.1),
                     adaptive=bool(kwargs.get("adaptive", True)))


def mode(q: WaitQueue[int]) -> str:
    return q.mode  # a call, so mypy does not narrow the mode between two asserts


def served_ids(q: WaitQueue[int], ids: dict[int, int], now: float, n: int) -> list[int]:
    out = []
    for _ in range(n):
        w = q.take(now)
        assert w is not None
        out.append(ids[id(w)])
    return out


async def test_fifo_under_normal_load() -> None:
    """Waiters served within the target keep strict arrival order, however long it goes on."""
    q = queue()
    order = []
    now = 0.0
    for i in range(2000):  # 2 s of traffic: every waiter waits 3 ms, under the 5 ms target
        w = waiter(now)
        q.push(w, now)
        now += 0.003
        assert q.take(now) is w
        order.append(i)
        assert mode(q) == "fifo"
    assert q.lifo_switches == 0
    assert not q
    assert q.live == 0


async def test_burst_shorter_than_interval_stays_fifo() -> None:
    """A burst drained within the interval is served first come, first served."""
    q = queue()
    ws = [waiter(0.0) for _ in range(50)]
    ids = {id(w): i for i, w in enumerate(ws)}
    for w in ws:
        q.push(w, 0.0)
    assert served_ids(q, ids, 0.05, 50) == list(range(50))
    assert q.lifo_switches == 0


async def test_standing_queue_switches_to_lifo_and_back_when_drained() -> None:
    """Above target, and growing over a whole interval after the one that formed it: newest first;
    back to FIFO once the queue drains."""
    q = queue()
    ws = [waiter(i * 0.001) for i in range(10)]
    ids = {id(w): i for i, w in enumerate(ws)}
    for i, w in enumerate(ws):
        q.push(w, i * 0.001)
    assert mode(q) == "fifo"
    assert served_ids(q, ids, 0.05, 1) == [0]  # oldest over target, but not yet for an interval
    assert mode(q) == "fifo"
    for i in range(5):  # callers keep coming while nobody is served: the queue grows
        ws.append(waiter(0.11 + i * 0.02))
        ids[id(ws[-1])] = len(ws) - 1
        q.push(ws[-1], 0.11 + i * 0.02)
    assert mode(q) == "fifo"  # the interval that formed the queue is not judged
    assert served_ids(q, ids, 0.21, 3) == [14, 13, 12]  # it grew from 0.11 to 0.21: LIFO
    assert mode(q) == "lifo"
    assert q.lifo_switches == 1
    assert served_ids(q, ids, 0.22, 11) == [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    assert not q
    assert mode(q) == "fifo"
    late = [waiter(1.0), waiter(1.001)]
    for w in late:
        q.push(w, 1.001)
    assert q.take(1.002) is late[0]  # first come, first served again


async def test_lifo_returns_to_fifo_when_the_oldest_is_under_target_again() -> None:
    """Once the stale waiters are gone and the oldest is fresh, arrival order is restored."""
    q = queue()
    stale = [waiter(0.0), *(waiter(0.11) for _ in range(3))]
    for w in stale:
        q.push(w, w.deadline - w.limit)
    q.push(waiter(0.21), 0.21)  # grew from 0.11 to 0.21
    assert q.steer(0.21) == "lifo"
    for w in stale:
        assert q.discard(w, 0.212)  # their callers gave up
    assert mode(q) == "fifo"


async def test_lifo_returns_to_fifo_when_the_queue_stops_growing() -> None:
    """A queue still standing but no longer growing (as many served as came) is FIFO again at the
    end of that interval, and a closed loop after it is never shed."""
    q = queue()
    for t in (0.0, 0.11, 0.13, 0.15):
        q.push(waiter(t), t)
    q.push(waiter(0.21), 0.21)
    assert q.steer(0.21) == "lifo"
    now = 0.21
    for _ in range(20):  # from 0.21 to 0.31 one served and one coming every 5 ms
        now += 0.005
        assert q.take(now) is not None
        q.push(waiter(now), now)
    assert q.steer(0.311) == "fifo"


async def test_non_adaptive_queue_never_leaves_fifo() -> None:
    """With adaptive control off, a standing queue is still served oldest first."""
    q = queue(adaptive=False)
    ws = [waiter(0.0), waiter(0.5), waiter(1.0)]
    for w in ws:
        q.push(w, 1.0)
    assert q.take(2.0) is ws[0]
    assert mode(q) == "fifo"


async def test_shed_keeps_old_waiters_that_can_still_be_served() -> None:
    """In LIFO, waiting longer than the interval alone sheds nobody (a burst FIFO would serve within
    the wait bound is served): only a deadline the drain rate cannot meet does; next_shed says when."""
    q = queue()
    old = [waiter(0.0) for _ in range(3)]
    for w in old:
        q.push(w, 0.0)
    for _ in range(3):
        q.push(waiter(0.12), 0.12)
    fresh = [waiter(0.21) for _ in range(2)]
    for w in fresh:
        q.push(w, 0.21)
    assert q.steer(0.21) == "lifo"
    assert q.shed(0.21, rate=0.0) == []  # no rate measured yet: nobody is judged
    assert q.shed(0.21, rate=50.0) == []  # 8 drain in 0.16 s, well inside the deadlines
    assert q.live == 8
    assert q.next_shed(0.21) == float("inf") or q.next_shed(0.21) > 0.21
    assert q.shed_counts["overload"] == 0


async def test_shed_drops_the_oldest_that_cannot_be_served_in_time() -> None:
    """In LIFO, a waiter whose deadline comes before the queue ahead could drain is shed early."""
    q = queue(interval=1.0)
    first = waiter(0.0, limit=2.05)  # deadline 2.05
    q.push(first, 0.0)
    short = waiter(1.5, limit=0.9)  # deadline 2.4
    q.push(short, 1.5)
    for t in (1.6, 1.7):
        q.push(waiter(t), t)
    rest = [waiter(2.01) for _ in range(4)]
    for w in rest:
        q.push(w, 2.01)
    assert q.steer(2.01) == "lifo"
    assert q.shed(2.02, rate=100.0) == [first]  # 8 drain in 80 ms, but it has 30 ms left
    assert q.shed(2.02, rate=100.0) == []  # 7 left drain in 70 ms: the short one makes it
    q.push(waiter(2.02), 2.02)
    assert q.shed(2.02, rate=10.0) == [short]  # at 10/s, 8 need 0.8 s but it has 0.38 s
    assert q.live == 7
    assert q.shed(2.02, rate=10.0) == []  # the others have time


async def test_shed_does_nothing_in_fifo_mode() -> None:
    """Under normal load nobody is shed, whatever the estimate."""
    q = queue()
    w = waiter(0.0, limit=0.01)
    q.push(w, 0.0)
    assert q.shed(0.005, rate=0.001) == []


async def test_make_room_gives_the_oldest_place_to_a_newcomer_only_in_lifo() -> None:
    """At the bound, FIFO refuses the newcomer; LIFO sheds the oldest waiter instead."""
    q = queue()
    first = waiter(0.0)
    q.push(first, 0.0)
    assert q.make_room(0.001) is None
    for t in (0.11, 0.13, 0.15, 0.21):
        q.push(waiter(t), t)
    assert q.make_room(0.21) is first  # the queue stood and grew: LIFO
    assert q.live == 4
    assert q.shed_counts["overload"] == 1


async def test_expire_takes_deadlines_in_order_within_the_budget() -> None:
    """Deadlines come off the heap earliest first, at most ``budget`` per call."""
    q = queue(adaptive=False)
    ws = [waiter(0.0, limit=float(lim)) for lim in (5, 1, 3, 2, 4)]
    for w in ws:
        q.push(w, 0.0)
    assert [w.limit for w in q.expire(3.5, budget=2)] == [1.0, 2.0]
    assert [w.limit for w in q.expire(3.5, budget=2)] == [3.0]
    assert q.next_due() == 4.0
    assert q.live == 2
    assert q.shed_counts["timeout"] == 3
    assert [w.limit for w in q if w.queued] == [5.0, 4.0]  # the others are marked, left in place


async def test_deadlines_in_order_and_out_of_order_expire_together_earliest_first() -> None:
    """Deadlines that come in order skip the heap; mixed with ones that do not (a shorter timeout,
    a caller keeping its place at the front), they still expire earliest first, and the served
    ones in between are never failed."""
    q = queue(adaptive=False)
    ws = [waiter(t, limit=lim) for t, lim in ((0.0, 3.0), (0.1, 3.0), (0.2, 1.0), (0.3, 3.0),
                                              (0.4, 0.5))]  # deadlines 3, 3.1, 1.2, 3.3, 0.9
    for w in ws:
        q.push(w, w.deadline - w.limit)
    keeper = waiter(0.0, limit=2.0)  # deadline 2.0, back at the front
    q.push(keeper, 0.45, front=True)
    assert q.next_due() == 0.9
    assert q.take(0.5) is keeper
    assert [w.deadline for w in q.expire(3.05)] == [0.9, 1.2, 3.0]
    assert q.next_due() == 3.1
    assert [w.deadline for w in q.expire(10.0)] == [3.1, 3.3]
    assert q.live == 0
    assert q.next_due() == float("inf")


async def test_served_and_cancelled_waiters_do_not_pile_up() -> None:
    """Leaving marks a waiter; ends are trimmed and rebuilds keep the dead at most the living."""
    q = queue(adaptive=False)
    ws = [waiter(0.0) for _ in range(20_000)]
    for w in ws:
        q.push(w, 0.0)
    for w in ws[1::2]:  # every other caller gives up: none of them at an end
        w.fut.cancel()
        assert q.discard(w, 0.0)
        assert not q.discard(w, 0.0)  # leaving twice counts once
    assert q.live == 10_000
    assert len(q) <= 2 * q.live + 64
    assert len(q.heap) <= 2 * q.live + 64
    for _ in range(9_999):
        assert q.take(0.0) is not None
    assert q.live == 1
    assert len(q) == 1
    assert len(q.heap) <= 64 + 2
    assert q
    assert q[0].queued


async def test_a_cancelled_waiter_not_yet_taken_off_is_skipped() -> None:
    """A waiter whose future was cancelled before its task could leave is never served."""
    q = queue()
    a, b = waiter(0.0), waiter(0.0)
    q.push(a, 0.0)
    q.push(b, 0.0)
    a.fut.cancel()
    assert q.take(0.001) is b
    assert not q
    assert q.live == 0
    assert not q.discard(a, 0.001)


async def test_take_all_and_fail_in_batches_wake_at_most_a_batch_per_iteration() -> None:
    """Failing every waiter hands out BATCH failures per loop turn, not all of them at once."""
    q = queue()
    ws = [waiter(0.0) for _ in range(BATCH * 3 + 5)]
    for w in ws:
        q.push(w, 0.0)
    taken = q.take_all(0.0)
    assert len(taken) == len(ws)
    assert not q
    assert q.live == 0
    assert q.next_due() == float("inf")
    fail_in_batches(asyncio.get_running_loop(), taken, RuntimeError("closing"))
    assert sum(w.fut.done() for w in ws) == BATCH
    await asyncio.sleep(0)
    assert sum(w.fut.done() for w in ws) == 2 * BATCH
    for _ in range(3):
        await asyncio.sleep(0)
    assert all(w.fut.done() for w in ws)
    for w in ws:
        assert isinstance(w.fut.exception(), RuntimeError)


async def test_drain_rate_is_measured_from_hand_offs() -> None:
    """The rate is what was served per second while callers queued."""
    q = queue(adaptive=False)
    assert q.drain_rate(0.0) == 0.0
    now = 0.0
    for _ in range(100):  # 100 served a second for 2 s, a queue always standing
        q.push(waiter(now), now)
        now += 0.01
        assert q.take(now) is not None
    assert 90 <= q.drain_rate(now) <= 110


async def test_sojourn_of_served_waiters_is_recorded() -> None:
    """The sojourn histogram holds the time each served waiter spent queued."""
    q = queue()
    q.push(waiter(0.0), 0.0)
    q.take(0.003)
    snap = q.sojourn.snapshot()
    assert snap.count == 1
    assert abs(snap.sum - 0.003) < 1e-9


async def test_a_standing_queue_that_does_not_grow_stays_fifo() -> None:
    """A closed loop - each caller served comes back - keeps the queue standing but never growing:
    first come, first served, nobody shed."""
    q = queue()
    ws = [waiter(0.0) for _ in range(9)]
    for w in ws:
        q.push(w, 0.0)
    now = 0.0
    for _ in range(200):  # one served every 5 ms for a second, and it queues again at once
        now += 0.005
        served = q.take(now)
        assert served is ws[0]
        ws = [*ws[1:], waiter(now)]
        q.push(ws[-1], now)
        assert mode(q) == "fifo"
    assert q.shed(now, rate=200.0) == []
    assert q.lifo_switches == 0


async def test_callers_that_give_up_and_come_back_do_not_make_the_queue_grow() -> None:
    """A closed loop whose callers sometimes cancel (and come back) is not overload: the cancelled
    count as leaving, so the queue stays first come, first served."""
    q = queue()
    ws = [waiter(0.0) for _ in range(9)]
    for w in ws:
        q.push(w, 0.0)
    now = 0.0
    for i in range(200):
        now += 0.005
        if i % 2:
            gone = ws.pop(3)  # a caller in the middle gives up
            gone.fut.cancel()
            assert q.discard(gone, now)
        else:
            assert q.take(now) is ws.pop(0)
        ws.append(waiter(now))
        q.push(ws[-1], now)
        assert mode(q) == "fifo"


async def test_closed_loop_after_a_burst_is_never_shed() -> None:
    """64 workers on 16 connections, all arriving at once, each served one coming back at once:
    the queue of 48 stands for seconds (well above target) but waits stay far under the deadline,
    so it is served first come, first served and nobody is shed - the burst that formed it is not
    growth (before, arrivals counted since it formed made this LIFO and shed its oldest)."""
    q = queue()
    ws = [waiter(i * 0.0002) for i in range(48)]  # arriving over 10 ms; 16 more got a connection
    for w in ws:
        q.push(w, w.deadline - w.limit)
    now = 0.015  # the 16 busy connections free up from 16 ms on: the queue stands from the start
    for i in range(3000):  # 3 s: a connection freed every ms (a 16 ms query)
        now += 0.001
        if i % 25 == 7:  # now and then a waiter gives up and comes back
            gone = ws.pop(20)
            gone.fut.cancel()
            assert q.discard(gone, now)
        else:
            assert q.take(now) is ws.pop(0)
            assert not q.shed(now, q.drain_rate(now))
        ws.append(waiter(now))
        q.push(ws[-1], now)
        assert mode(q) == "fifo"
        assert q.make_room(now) is None
    assert q.lifo_switches == 0
    assert q.shed_counts == {"full": 0, "overload": 0, "timeout": 0}
