"""Scheduling micro-benchmarks for asyncio-compatible event loops.

Every benchmark is a plain function ``bench(loop, n) -> int``:

* ``loop`` is a fresh, not yet running event loop;
* ``n`` is the size parameter (the number of operations to perform);
* the return value is the number of operations that were actually observed
  (callbacks run, timers fired, tasks finished, ...).  The harness checks it
  against :func:`expected_ops` so a loop that silently drops work is reported
  as an error instead of looking fast.

The functions drive the loop themselves (``run_forever`` + ``stop`` or
``run_until_complete``) so that the timed region covers the whole scheduling
path, including starting and stopping the loop once.  Nothing here touches the
network, the file system or signals; every benchmark is bounded by its count.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# 1. call_soon_chain
# ---------------------------------------------------------------------------


def call_soon_chain(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """A single callback that re-schedules itself with call_soon n times."""
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if done < n:
            loop.call_soon(step)
        else:
            loop.stop()

    loop.call_soon(step)
    loop.run_forever()
    return done


# ---------------------------------------------------------------------------
# 2. call_soon_100_chains
# ---------------------------------------------------------------------------

CHAINS = 100


def call_soon_100_chains(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """100 independent call_soon chains sharing a total of n callbacks.

    With 100 chains in flight the ready queue always holds ~100 handles, so
    this measures queue throughput rather than the single-handle fast path.
    """
    per_chain, extra = divmod(n, CHAINS)
    done = 0
    chains_left = CHAINS

    def step(left: int) -> None:
        nonlocal done, chains_left
        done += 1
        if left > 1:
            loop.call_soon(step, left - 1)
            return
        chains_left -= 1
        if chains_left == 0:
            loop.stop()

    for i in range(CHAINS):
        length = per_chain + (1 if i < extra else 0)
        if length:
            loop.call_soon(step, length)
        else:
            chains_left -= 1
    if chains_left == 0:
        return done
    loop.run_forever()
    return done


# ---------------------------------------------------------------------------
# 3. call_soon_threadsafe
# ---------------------------------------------------------------------------

THREADSAFE_BATCH = 500
THREADSAFE_WINDOW = 4  # batches allowed in flight at once
THREADSAFE_STALL_S = 30.0  # producer gives up if the loop stalls this long


def call_soon_threadsafe(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Another thread posts n callbacks with call_soon_threadsafe.

    The producer sends batches of THREADSAFE_BATCH callbacks and may have at
    most THREADSAFE_WINDOW batches outstanding; the loop hands a credit back
    each time it has run a full batch.  This keeps the queue bounded while
    still letting producer and consumer overlap.  The measurement is end to
    end: from starting the loop (which starts the producer) to the loop
    having executed the last callback.
    """
    credits = threading.Semaphore(THREADSAFE_WINDOW)
    received = 0
    stalled = threading.Event()

    def on_item() -> None:
        nonlocal received
        received += 1
        if received % THREADSAFE_BATCH == 0:
            credits.release()
        if received == n:
            loop.stop()

    def producer() -> None:
        post = loop.call_soon_threadsafe
        sent = 0
        while sent < n:
            if not credits.acquire(timeout=THREADSAFE_STALL_S):
                stalled.set()
                loop.call_soon_threadsafe(loop.stop)
                return
            batch = min(THREADSAFE_BATCH, n - sent)
            for _ in range(batch):
                post(on_item)
            sent += batch

    if n <= 0:
        return 0
    thread = threading.Thread(target=producer, name="bench-producer", daemon=True)
    loop.call_soon(thread.start)
    loop.run_forever()
    thread.join(THREADSAFE_STALL_S)
    if stalled.is_set():
        raise RuntimeError(f"producer stalled after {received} of {n} callbacks")
    return received


# ---------------------------------------------------------------------------
# 4. call_later_cancel
# ---------------------------------------------------------------------------

TIMER_SPREAD = 97  # distinct delays; odd so both halves cover every delay
TIMER_STEP_S = 0.00002  # delays range over 0 .. 1.92 ms


def call_later_cancel(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Schedule n timers with call_later, cancel every second one, run the rest.

    Delays are ``20 us * (i % 97)`` (0 .. 1.92 ms), so there is at most ~2 ms
    of actual waiting; scheduling 100k timers takes far longer than that on
    any loop, so the time is dominated by the timer queue: insertion with
    many distinct deadlines, cancellation, and popping expired timers in
    deadline order.  (A cpu/wall ratio well below 1 would reveal sleeping.)
    The operation count is n (timers scheduled); n // 2 of them are also
    cancelled and (n + 1) // 2 must fire.
    """
    expected_fired = n - n // 2
    fired = 0

    def on_timer() -> None:
        nonlocal fired
        fired += 1
        if fired == expected_fired:
            loop.stop()

    def schedule_all() -> None:
        later = loop.call_later
        for i in range(n):
            handle = later(TIMER_STEP_S * (i % TIMER_SPREAD), on_timer)
            if i & 1:
                handle.cancel()

    if expected_fired == 0:
        return 0
    loop.call_soon(schedule_all)
    loop.run_forever()
    if fired != expected_fired:
        raise RuntimeError(f"{fired} timers fired, expected {expected_fired}")
    return n


# ---------------------------------------------------------------------------
# 5. sleep0_pingpong
# ---------------------------------------------------------------------------


def sleep0_pingpong(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Two tasks each doing ``await asyncio.sleep(0)`` n // 2 times.

    Both tasks yield on every iteration, so they strictly alternate.  The
    operation count is the total number of sleep(0) calls (n).
    """
    rounds = n // 2
    steps = [0, 0]

    async def player(idx: int) -> None:
        sleep = asyncio.sleep
        for _ in range(rounds):
            await sleep(0)
            steps[idx] += 1

    async def main() -> None:
        await asyncio.gather(player(0), player(1))

    loop.run_until_complete(main())
    return steps[0] + steps[1]


# ---------------------------------------------------------------------------
# 6. gather_tasks
# ---------------------------------------------------------------------------

GATHER_WIDTH = 1000


def gather_tasks(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Repeatedly create_task 1000 trivial coroutines and gather them.

    n is the total number of tasks; it is spread over ceil(n / 1000) rounds.
    """

    async def leaf() -> int:
        return 1

    async def main() -> int:
        total = 0
        left = n
        create = loop.create_task
        while left > 0:
            width = min(GATHER_WIDTH, left)
            results = await asyncio.gather(*[create(leaf()) for _ in range(width)])
            total += sum(results)
            left -= width
        return total

    return loop.run_until_complete(main())


# ---------------------------------------------------------------------------
# 7. create_task_await
# ---------------------------------------------------------------------------


def create_task_await(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """``await loop.create_task(coro())`` n times, one after the other."""

    async def leaf() -> int:
        return 1

    async def main() -> int:
        total = 0
        create = loop.create_task
        for _ in range(n):
            total += await create(leaf())
        return total

    return loop.run_until_complete(main())


# ---------------------------------------------------------------------------
# 8. future_pingpong
# ---------------------------------------------------------------------------


def future_pingpong(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Two tasks exchange n round trips through loop.create_future().

    Each round trip: "ping" resolves the request future with a fresh reply
    future and waits on it; "pong" wakes up, creates the next request future
    and resolves the reply with it.  So a round costs two create_future, two
    set_result and two task wake-ups.
    """
    rounds_done = 0

    async def ping(request: asyncio.Future) -> None:
        nonlocal rounds_done
        for _ in range(n):
            reply = loop.create_future()
            request.set_result(reply)
            request = await reply
            rounds_done += 1

    async def pong(request: asyncio.Future) -> None:
        for _ in range(n):
            reply = await request
            request = loop.create_future()
            reply.set_result(request)

    async def main() -> None:
        first = loop.create_future()
        await asyncio.gather(ping(first), pong(first))

    loop.run_until_complete(main())
    return rounds_done


def sock_recv_wait(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """n ``loop.sock_recv`` calls on a socket pair, each of which waits.

    Before each call the task schedules ``send`` of one byte on the other
    end with ``call_soon``; that callback runs only once the task has
    yielded, so every call finds nothing, waits for its socket to become
    readable, and reads the byte then: the cost of one ``sock_*`` wait
    (watching the descriptor, a pass through the selector, the read, the
    future and the task's wake-up).
    """
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    got = 0

    async def main() -> None:
        nonlocal got
        for _ in range(n):
            loop.call_soon(b.send, b"x")
            got += len(await loop.sock_recv(a, 16))

    try:
        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()
    return got


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    name: str
    func: Callable[[asyncio.AbstractEventLoop, int], int]
    n: int  # default size: ~0.2-0.5 s per run on the stock asyncio loop
    unit: str  # what one "op" is, for the report

    def expected_ops(self, n: int) -> int:
        if self.name == "sleep0_pingpong":
            return 2 * (n // 2)
        return n


BENCHES: dict[str, Bench] = {
    b.name: b
    for b in (
        Bench("call_soon_chain", call_soon_chain, 250_000, "callback"),
        Bench("call_soon_100_chains", call_soon_100_chains, 400_000, "callback"),
        Bench("call_soon_threadsafe", call_soon_threadsafe, 80_000, "callback"),
        Bench("call_later_cancel", call_later_cancel, 100_000, "timer scheduled"),
        Bench("sleep0_pingpong", sleep0_pingpong, 200_000, "sleep(0)"),
        Bench("gather_tasks", gather_tasks, 100_000, "task"),
        Bench("create_task_await", create_task_await, 50_000, "task"),
        Bench("future_pingpong", future_pingpong, 50_000, "round trip"),
        Bench("sock_recv_wait", sock_recv_wait, 50_000, "wait"),
    )
}
