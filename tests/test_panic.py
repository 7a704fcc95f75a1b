"""A Rust panic inside a loop pass reaches Python as an exception, never as
an abort, and leaves the loop usable (issue 10, item 9).

No correct input makes ferroloop panic, so a test-only hook
(`ferroloop._ferroloop._test_panic(site)`) makes the next pass panic once at
one of three points: the start of a pass, just after the wait with the
loop's state borrowed, and just after due timers became ready (borrowed).
Each case runs in a child process, so an abort would show up as a crash
rather than take the test run down.

What must hold after the panic: `run_until_complete` raised pyo3's
`PanicException` (a BaseException, as KeyboardInterrupt is); the loop is no
longer running and the running-loop slot is clear; a handle queued while the
loop ran, hidden from the cyclic GC while queued and held elsewhere, is
tracked again (as after any exit from `run_forever`); running the same task
again finishes the whole echo and every timer fires once, in order; closing
the loop releases every descriptor it had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import ferroloop._ferroloop as native
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

KINDS = [
    "ferroloop",
    "ferroloop-poll",
    "ferroloop-select",
    "ferroloop-SelectSelector",
    "ferroloop-proactor",
]
SITES = ["pass", "wait", "timers"]

CHILD = textwrap.dedent(
    r"""
    import asyncio, gc, json, sys, zlib
    sys.path.insert(0, sys.argv[3])
    from conftest import fd_count, make_loop
    import ferroloop._ferroloop as native

    kind, site = sys.argv[1:3]
    fds_before = fd_count()
    loop = make_loop(kind)
    out = {"ticks": [], "kept_tracked_while_running": None}
    kept = []
    MESSAGES, SIZE = 300, 4096

    async def serve(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    def tick(i):
        out["ticks"].append(i)

    async def work():
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        base = loop.time()
        for i in range(20):
            loop.call_at(base + 0.002 * (i + 1), tick, i)
        sent = got = 0
        crc_sent = crc_got = 0
        for n in range(MESSAGES):
            if n == MESSAGES // 3:
                # Queued while running: hidden from the GC, held here too.
                kept.append(loop.call_later(3600, tick, -1))
                out["kept_tracked_while_running"] = gc.is_tracked(kept[0])
                native._test_panic(site)
            payload = bytes([n % 251]) * SIZE
            writer.write(payload)
            sent += len(payload)
            crc_sent = zlib.crc32(payload, crc_sent)
            while got < sent:
                chunk = await reader.read(65536)
                got += len(chunk)
                crc_got = zlib.crc32(chunk, crc_got)
        await asyncio.sleep(0.05)  # past the last timer
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return sent, got, crc_sent == crc_got

    task = loop.create_task(work())
    try:
        loop.run_until_complete(task)
        out["raised"] = None
    except BaseException as e:  # noqa: BLE001 - the point of the test
        out["raised"] = type(e).__name__
        out["is_exception"] = isinstance(e, Exception)
        out["message"] = str(e)
    out["running_after"] = loop.is_running()
    out["running_loop_after"] = asyncio._get_running_loop() is not None
    out["kept_tracked_after"] = gc.is_tracked(kept[0]) if kept else None
    out["task_done_after_panic"] = task.done()
    gc.collect()
    sent, got, same = loop.run_until_complete(task)
    out.update(sent=sent, got=got, same=same)
    kept[0].cancel()
    kept.clear()
    stats = loop.stats()
    out["passes"] = stats.passes
    loop.close()
    del loop, task
    gc.collect()
    out["fds_leaked"] = fd_count() - fds_before
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_panic_in_a_pass_is_an_exception_and_the_loop_goes_on(kind, site):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, site, HERE],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"child ended with {proc.returncode}:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["raised"] == "PanicException", out
    assert not out["is_exception"]  # a BaseException, like KeyboardInterrupt
    assert f"ferroloop test panic at site {SITES.index(site) + 1}" in out["message"]
    assert not out["running_after"] and not out["running_loop_after"]
    assert not out["task_done_after_panic"]
    # Hidden while queued on a running loop; shown again after the panic.
    assert out["kept_tracked_while_running"] is False
    assert out["kept_tracked_after"] is True
    assert out["sent"] == out["got"] == 300 * 4096 and out["same"]
    assert out["ticks"] == list(range(20))
    assert out["fds_leaked"] == 0
    # Rust's panic message went to stderr; nothing else did.
    assert "panicked at" in proc.stderr


def test_the_hook_refuses_unknown_sites_and_disarms():
    with pytest.raises(ValueError, match="unknown panic site"):
        native._test_panic("everywhere")
    native._test_panic("pass")
    native._test_panic(None)
    import ferroloop

    loop = ferroloop.new_event_loop()
    try:
        assert loop.run_until_complete(_answer()) == 42
    finally:
        loop.close()


async def _answer():
    return 42
