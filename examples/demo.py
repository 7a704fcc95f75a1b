"""ferroloop demonstration: real asyncio programs, on asyncio's loop and on
ferroloop's (the selector loop, and the io_uring proactor loop where io_uring
works), side by side.

    python examples/demo.py

Each workload is an ordinary asyncio program (queues, timeouts, task groups,
threads, a fd watched with add_reader, a TCP echo server with clients on
127.0.0.1, child processes with pipes); it runs once on each loop, the
results must be identical, and the wall time of each is printed with the
ratio. The machine is shared, so treat the times as indicative; the
benchmarks in benches/ measure properly.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import socket
import sys
import time

import ferroloop

request_id = contextvars.ContextVar("request_id", default=None)


async def pipeline(n_items: int = 20_000) -> int:
    """Producer -> 4 workers -> collector through asyncio.Queue."""
    jobs: asyncio.Queue[int | None] = asyncio.Queue(maxsize=256)
    results: asyncio.Queue[int] = asyncio.Queue()

    async def producer() -> None:
        for i in range(n_items):
            await jobs.put(i)
        for _ in range(4):
            await jobs.put(None)

    async def worker() -> None:
        while (item := await jobs.get()) is not None:
            await results.put(item * item % 97)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(producer())
        for _ in range(4):
            tg.create_task(worker())
    total = 0
    while not results.empty():
        total += results.get_nowait()
    return total


async def timers(n: int = 2_000) -> list[int]:
    """Many timers, half cancelled; the rest must fire in deadline order."""
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    done = loop.create_future()
    handles = []
    base = loop.time()
    for i in range(n):
        handles.append(loop.call_at(base + (n - i) * 0.000_01, fired.append, i))
    for h in handles[::2]:
        h.cancel()
    loop.call_later(n * 0.000_01 + 0.01, done.set_result, None)
    await done
    return fired


async def timeouts() -> list[str]:
    """asyncio.timeout and wait_for around slow work."""
    out = []
    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)
    except TimeoutError:
        out.append("timeout fired")
    try:
        await asyncio.wait_for(asyncio.sleep(10), 0.01)
    except TimeoutError:
        out.append("wait_for fired")
    out.append(str(await asyncio.wait_for(asyncio.sleep(0, "fast"), 1)))
    return out


async def threads(n: int = 200) -> int:
    """Work in the default executor and callbacks from other threads."""
    loop = asyncio.get_running_loop()
    squares = await asyncio.gather(*(asyncio.to_thread(pow, i, 2) for i in range(n)))
    got = loop.create_future()
    count = 0

    def bump() -> None:
        nonlocal count
        count += 1
        if count == n and not got.done():
            got.set_result(count)

    def poster() -> None:
        for _ in range(n):
            loop.call_soon_threadsafe(bump)

    await loop.run_in_executor(None, poster)
    return sum(squares) + await got


async def context_and_fds() -> list[str]:
    """contextvars follow callbacks; a socketpair watched with add_reader."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    seen: list[str] = []
    done = loop.create_future()

    def on_readable() -> None:
        data = a.recv(100)
        seen.append(f"read {data.decode()} in request {request_id.get()}")
        loop.remove_reader(a)
        done.set_result(None)

    request_id.set("r-42")
    loop.add_reader(a, on_readable)
    loop.call_soon(b.send, b"hello")
    await done
    a.close()
    b.close()
    return seen


async def tcp_echo(n_clients: int = 20, n_messages: int = 200) -> int:
    """A streams echo server on 127.0.0.1 and concurrent clients."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        total = 0
        for j in range(n_messages):
            writer.write(f"{i}:{j}\n".encode())
            total += len(await reader.readline())
        writer.close()
        await writer.wait_closed()
        return total

    async with server:
        sizes = await asyncio.gather(*(client(i) for i in range(n_clients)))
    return sum(sizes)


async def subprocesses(n: int = 10) -> list[bytes]:
    """Children with piped stdin/stdout, run concurrently."""

    async def upper(text: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            "tr", "a-z", "A-Z", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate(text.encode())
        return out + str(proc.returncode).encode()

    return await asyncio.gather(*(upper(f"child {i}") for i in range(n)))


WORKLOADS = [pipeline, timers, timeouts, threads, context_and_fds, tcp_echo, subprocesses]


def factory_for(name: str):
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "proactor":
        return functools.partial(ferroloop.new_event_loop, kind="proactor")
    return ferroloop.new_event_loop


def run_on(name: str, workload):
    with asyncio.Runner(loop_factory=factory_for(name)) as runner:
        start = time.perf_counter()
        result = runner.run(workload())
        elapsed = time.perf_counter() - start
        loop_name = type(runner.get_loop()).__module__.split(".")[0]
    return result, elapsed, loop_name


def main() -> int:
    print(f"ferroloop {ferroloop.__version__} on Python {sys.version.split()[0]}")
    loop = ferroloop.new_event_loop()
    print(f"selector loop backend: {loop.backend}")
    loop.close()
    why_not = ferroloop.proactor_unavailable_reason()
    kinds = ["ferroloop"] if why_not else ["ferroloop", "proactor"]
    print(f"proactor loop: {'unavailable: ' + why_not if why_not else 'io_uring'}\n")
    header = f"{'workload':<16} {'asyncio':>10}"
    for kind in kinds:
        label = "selector" if kind == "ferroloop" else kind
        header += f" {label:>10} {'speed-up':>9}"
    print(header + "  same result")
    ok = True
    for workload in WORKLOADS:
        ref, t_ref, _ = run_on("asyncio", workload)
        line = f"{workload.__name__:<16} {t_ref * 1e3:>8.1f}ms"
        same = True
        for kind in kinds:
            got, t_got, loop_name = run_on(kind, workload)
            same &= ref == got and loop_name == "ferroloop"
            line += f" {t_got * 1e3:>8.1f}ms {t_ref / t_got:>8.2f}x"
        ok &= same
        print(f"{line}  {'yes' if same else 'NO'}")

    async def main_coro() -> str:
        return type(asyncio.get_running_loop()).__name__

    print(f"\nferroloop.run(): the running loop is a {ferroloop.run(main_coro())}")
    ferroloop.install()
    try:
        print(f"after ferroloop.install(), asyncio.run() runs on a {asyncio.run(main_coro())}")
    finally:
        asyncio.set_event_loop_policy(None)
    print("\nall results identical" if ok else "\nRESULTS DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
