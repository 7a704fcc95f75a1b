"""Export ferroloop's loop statistics to a metrics system (StatsD over UDP).

    python examples/loop_stats.py [--statsd HOST:PORT] [--every SECONDS] [--for SECONDS]

A reporter task reads ``loop.stats()`` every few seconds and sends the
counters' increments as StatsD counters, the times as timings and the queue
lengths as gauges, one datagram per report. Without ``--statsd`` it prints
the lines instead. The program runs a small workload meanwhile (an echo
server and a client, a callback that blocks now and then) so there is
something to see; in a real program only ``report_stats`` is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time

import ferroloop


async def report_stats(send, every: float, prefix: str = "ferroloop") -> None:
    """Every ``every`` seconds, hand ``send`` one StatsD payload."""
    loop = asyncio.get_running_loop()
    last = loop.stats()
    while True:
        await asyncio.sleep(every)
        now = loop.stats()
        busy = now.busy_time - last.busy_time
        wait = now.wait_time - last.wait_time
        lines = [
            f"{prefix}.passes:{now.passes - last.passes}|c",
            f"{prefix}.callbacks:{now.callbacks - last.callbacks}|c",
            f"{prefix}.busy_ms:{busy * 1e3:.3f}|ms",
            f"{prefix}.wait_ms:{wait * 1e3:.3f}|ms",
            # The share of the interval spent running rather than waiting.
            f"{prefix}.utilization:{busy / max(busy + wait, 1e-9):.4f}|g",
            f"{prefix}.lag_ms:{now.lag * 1e3:.3f}|g",
            f"{prefix}.max_lag_ms:{now.max_lag * 1e3:.3f}|g",
            f"{prefix}.ready:{now.ready}|g",
            f"{prefix}.timers:{now.timers}|g",
        ]
        if now.slowest_duration is not None:
            lines.append(f"{prefix}.slowest_callback_ms:{now.slowest_duration * 1e3:.3f}|g")
        send("\n".join(lines).encode())
        last = now


async def workload(duration: float) -> None:
    async def echo(reader, writer):
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    end = loop.time() + duration
    n = 0
    while loop.time() < end:
        writer.write(b"x" * 1024)
        await reader.readexactly(1024)
        n += 1
        if n % 2000 == 0:
            time.sleep(0.02)  # noqa: ASYNC251 - a blocking call, for the slowest-callback figure
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def main(args) -> None:
    if args.statsd:
        host, port = args.statsd.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host, int(port)))

        def send(payload: bytes) -> None:
            try:
                sock.send(payload)
            except OSError:
                pass  # a metrics system that is down must not stop the program

    else:

        def send(payload: bytes) -> None:
            print(payload.decode(), end="\n\n", flush=True)

    reporter = asyncio.create_task(report_stats(send, args.every))
    await workload(args.duration)
    await asyncio.sleep(args.every * 1.5)  # one more report, of an idle loop
    reporter.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--statsd", metavar="HOST:PORT")
    ap.add_argument("--every", type=float, default=2.0)
    ap.add_argument("--for", dest="duration", type=float, default=5.0)
    ferroloop.run(main(ap.parse_args()))
