"""Ctrl-C: SIGINT sent to a process running a loop raises KeyboardInterrupt
promptly, whether the loop is blocked in its wait or busy running callbacks;
under asyncio.run / ferroloop.run / asyncio.Runner the main task is
cancelled first, then KeyboardInterrupt is raised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

CHILD = textwrap.dedent(
    """
    import asyncio, selectors, socket, sys
    import ferroloop

    kind, mode = sys.argv[1], sys.argv[2]

    def make():
        if kind == "asyncio":
            return asyncio.SelectorEventLoop()
        if kind == "ferroloop":
            return ferroloop.new_event_loop()
        if kind == "ferroloop-poll":
            return ferroloop.new_event_loop("poll")
        if kind == "ferroloop-select":
            return ferroloop.new_event_loop("select")
        if kind == "ferroloop-SelectSelector":
            return ferroloop.new_event_loop(selectors.SelectSelector())
        if kind == "ferroloop-proactor":
            return ferroloop.ProactorEventLoop()
        raise SystemExit("bad kind")

    def ready():
        print("READY", flush=True)

    if mode == "blocked":
        loop = make()
        loop.call_later(60, loop.stop)
        loop.call_soon(ready)
        loop.run_forever()
    elif mode == "busy":
        loop = make()
        count = [0]
        def spin():
            count[0] += 1
            if count[0] == 1000:
                ready()
            loop.call_soon(spin)
        loop.call_soon(spin)
        loop.run_forever()
    elif mode == "busy-io":
        # Only a builtin runs in each pass: no Python frame checks signals.
        loop = make()
        a, b = socket.socketpair()
        loop.add_writer(a, int)
        loop.call_later(0.05, ready)
        loop.run_forever()
    elif mode == "busy-builtins":
        # A callback that reschedules itself and is only C code: the loop
        # never waits and no Python frame runs, so only the loop itself can
        # notice the signal.
        import functools
        loop = make()
        again = functools.partial(loop.call_soon)
        again.__setstate__((loop.call_soon, (again,), {}, None))
        loop.call_soon(again)
        loop.call_later(0.05, ready)
        loop.run_forever()
    elif mode == "busy-io-builtins":
        # Same with an fd: an always-writable socket whose writer (a C
        # method) queues a C callback, so every pass has work ready.
        loop = make()
        a, b = socket.socketpair()
        loop.add_writer(a, loop.call_soon, int)
        loop.call_later(0.05, ready)
        loop.run_forever()
    elif mode == "until-complete":
        loop = make()
        async def main():
            ready()
            await asyncio.sleep(60)
        loop.run_until_complete(main())
    elif mode.startswith("runner-"):
        async def main():
            ready()
            try:
                if mode == "runner-blocked":
                    await asyncio.sleep(60)
                else:
                    while True:
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                print("CANCELLED", flush=True)
                raise
        if kind == "asyncio.run":
            asyncio.run(main())
        elif kind == "ferroloop.run":
            ferroloop.run(main())
        elif kind == "Runner(loop_factory)":
            with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
                runner.run(main())
        else:
            raise SystemExit("bad kind")
    print("RETURNED", flush=True)
    """
)


def _interrupt(kind, mode):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killer = threading.Timer(20, proc.kill)
    killer.start()
    try:
        line = proc.stdout.readline()
        assert line == "READY\n", (line, proc.stderr.read() if proc.poll() is not None else "")
        # Let the loop get back into its wait (or keep spinning).
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=3.5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"process still running 3.5 s after SIGINT; stderr: {err}")
        elapsed = time.monotonic() - t0
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err, elapsed


LOOP_KINDS = [
    "asyncio",
    "ferroloop",
    "ferroloop-poll",
    "ferroloop-select",
    "ferroloop-SelectSelector",
    "ferroloop-proactor",
]


@pytest.mark.parametrize("mode", ["blocked", "busy", "busy-io", "until-complete"])
@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_sigint_raises_keyboard_interrupt(kind, mode):
    returncode, out, err, elapsed = _interrupt(kind, mode)
    assert elapsed < 3.0
    assert "RETURNED" not in out
    assert "Traceback (most recent call last):" in err
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    # An uncaught KeyboardInterrupt makes the interpreter exit by SIGINT.
    assert returncode == -signal.SIGINT, (returncode, err)


# Regression test for a bug this suite found: signals were checked only after
# a blocking wait, so a loop whose callbacks were all C code (no Python frame
# to run the interpreter's own check) never saw SIGINT. Every pass checks now.
@pytest.mark.parametrize("mode", ["busy-builtins", "busy-io-builtins"])
@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_sigint_interrupts_a_loop_running_only_c_callbacks(kind, mode):
    returncode, _out, err, elapsed = _interrupt(kind, mode)
    assert elapsed < 3.0
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert returncode == -signal.SIGINT, (returncode, err)


@pytest.mark.parametrize("mode", ["runner-blocked", "runner-busy"])
@pytest.mark.parametrize("kind", ["asyncio.run", "ferroloop.run", "Runner(loop_factory)"])
def test_sigint_under_a_runner_cancels_main_then_interrupts(kind, mode):
    returncode, out, err, elapsed = _interrupt(kind, mode)
    assert elapsed < 3.0
    assert out.splitlines() == ["CANCELLED"]  # READY was read before SIGINT
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert returncode == -signal.SIGINT, (returncode, err)
