"""``loop.stats()``: ferroloop's always-on loop statistics (asyncio has none,
so these run on every ferroloop kind only)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import threading
import time
import weakref

import ferroloop
import pytest
from conftest import FD_KINDS, make_loop

KINDS = [k for k in FD_KINDS if k.startswith("ferroloop")]


@pytest.fixture(params=KINDS)
def loop(request):
    lp = make_loop(request.param)
    yield lp
    lp.close()


def test_counts_passes_and_callbacks_run(loop):
    hits = []
    for i in range(50):
        loop.call_soon(hits.append, i)
    loop.call_soon(hits.append, "cancelled").cancel()
    loop.call_soon(loop.stop)
    before = loop.stats()
    assert (before.passes, before.callbacks, before.ready) == (0, 0, 52)
    loop.run_forever()
    st = loop.stats()
    assert hits == list(range(50))
    # Everything was ready when the pass began: one pass, the cancelled
    # handle not counted.
    assert (st.passes, st.callbacks, st.ready) == (1, 51, 0)
    assert isinstance(st, ferroloop.LoopStats)
    assert st._asdict()["callbacks"] == 51


def test_busy_and_wait_time(loop):
    async def main():
        time.sleep(0.15)  # noqa: ASYNC251 - blocks on purpose: running, not waiting
        await asyncio.sleep(0.25)  # waiting

    loop.run_until_complete(main())
    st = loop.stats()
    assert 0.15 <= st.busy_time < 0.25 + 1.0
    assert 0.2 <= st.wait_time < 2.0


def test_slowest_callback_named_with_its_duration(loop):
    def blocker():
        time.sleep(0.12)

    async def main():
        loop.call_soon(blocker)
        await asyncio.sleep(0.01)
        for _ in range(200):  # faster callbacks do not displace it
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    st = loop.stats()
    assert "blocker" in st.slowest_callback
    assert 0.1 <= st.slowest_duration < 1.0


def test_a_slow_task_step_shows_the_task(loop):
    async def grinding():
        time.sleep(0.1)  # noqa: ASYNC251 - a slow step, on purpose

    loop.run_until_complete(grinding())
    st = loop.stats()
    assert st.slowest_callback.startswith("<Task")
    assert "grinding" in st.slowest_callback
    assert st.slowest_duration >= 0.09


def test_lag_of_a_timer_held_up_by_a_callback(loop):
    fired = []
    loop.call_later(0.01, fired.append, 1)
    loop.call_soon(time.sleep, 0.15)
    loop.call_later(0.3, loop.stop)
    loop.run_forever()
    st = loop.stats()
    assert fired == [1]
    # The 10 ms timer ran after the 150 ms callback: ~140 ms late.
    assert 0.1 <= st.max_lag < 1.0
    # The last due timer (the stop) ran on time.
    assert st.lag < st.max_lag
    assert st.timers == 0


def test_keeps_no_reference_to_the_slowest_callback(loop):
    class Payload:
        pass

    p = Payload()
    ref = weakref.ref(p)

    def slow(obj):
        time.sleep(0.05)

    loop.call_soon(slow, p)
    loop.call_soon(loop.stop)
    del p
    loop.run_forever()
    gc.collect()
    assert ref() is None
    assert "slow" in loop.stats().slowest_callback


def test_a_callback_whose_repr_raises(loop):
    class Odd:
        def __call__(self):
            time.sleep(0.05)

        def __repr__(self):
            raise RuntimeError("no repr")

    loop.call_soon(Odd())
    loop.call_soon(loop.stop)
    loop.run_forever()
    st = loop.stats()
    assert st.callbacks == 2
    assert st.slowest_callback == "<handle>"
    assert st.slowest_duration >= 0.04


def test_failing_callbacks_are_counted(loop):
    errors = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx["exception"]))
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(errors) == 1
    assert loop.stats().callbacks == 2


def test_read_from_another_thread_while_running(loop):
    seen = []
    stop = threading.Event()

    def reader():
        while not stop.is_set() and len(seen) < 500:
            seen.append(loop.stats().callbacks)
            time.sleep(0.001)

    async def main():
        t = threading.Thread(target=reader)
        t.start()
        for _ in range(3000):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        stop.set()
        await loop.run_in_executor(None, t.join)

    loop.run_until_complete(main())
    assert len(seen) > 1
    assert seen == sorted(seen)
    assert loop.stats().callbacks >= 3000


def test_run_once_counts_too(loop):
    loop.call_soon(lambda: None)
    loop._run_once()
    st = loop.stats()
    assert (st.passes, st.callbacks) == (1, 1)
    assert st.busy_time >= 0


def test_still_readable_after_close(loop):
    loop.run_until_complete(asyncio.sleep(0))
    n = loop.stats().callbacks
    loop.close()
    assert loop.stats().callbacks == n


def test_the_statsd_example_exports_the_figures():
    """examples/loop_stats.py sends StatsD datagrams with every figure."""
    here = os.path.dirname(os.path.abspath(__file__))
    example = os.path.join(here, "..", "examples", "loop_stats.py")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(30)
        port = rx.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, example, "--statsd", f"127.0.0.1:{port}", "--every", "0.3"]
            + ["--for", "0.7"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        reports = []
        rx.settimeout(0.5)
        try:
            while True:
                reports.append(rx.recv(65536).decode())
        except TimeoutError:
            pass
    assert len(reports) >= 2
    figures = {}
    for line in reports[0].splitlines():
        name, rest = line.split(":", 1)
        value, kind = rest.split("|")
        figures[name] = (float(value), kind)
    assert figures["ferroloop.callbacks"][0] > 100
    assert figures["ferroloop.callbacks"][1] == "c"
    assert 0 < figures["ferroloop.utilization"][0] <= 1
    for name in ("busy_ms", "wait_ms", "lag_ms", "max_lag_ms", "ready", "timers", "passes"):
        assert f"ferroloop.{name}" in figures


@pytest.mark.parametrize("clock", ["coarse", "off"])
def test_the_tick_clock_can_be_chosen(clock):
    code = (
        "import ferroloop, time\n"
        "loop = ferroloop.new_event_loop()\n"
        "loop.call_soon(time.sleep, 0.06)\n"
        "loop.call_soon(loop.stop)\n"
        "loop.run_forever()\n"
        "st = loop.stats()\n"
        "print(st.callbacks, st.slowest_duration)\n"
    )
    env = {**os.environ, "FERROLOOP_STATS_CLOCK": clock}
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    callbacks, slowest = out.stdout.split()
    assert callbacks == "2"
    if clock == "off":
        assert slowest == "None"
    else:
        # The coarse clock moves once per kernel tick (1 to 10 ms).
        assert 0.045 <= float(slowest) < 1.0


def test_a_signal_during_the_description_is_not_lost(loop):
    """Describing a new slowest callback runs Python code (its repr); a
    SIGINT whose KeyboardInterrupt is raised there reaches the caller of
    run_forever, as it would from any other Python code the loop runs."""
    import signal

    class Interrupting:
        def __call__(self):
            time.sleep(0.02)

        def __repr__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the signal's handler runs in here
                pass
            return "Interrupting()"

    loop.call_soon(Interrupting())
    loop.call_soon(loop.stop)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
