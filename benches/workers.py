#!/usr/bin/env python3
"""Multi-process HTTP servers: a tiny app on uvicorn and on aiohttp, with 1
and 2 worker processes, each worker on the loop under test, load from wrk.

Usage (from the repository root):

    python benches/workers.py [--loops asyncio,uvloop,ferroloop,ferroloop-proactor]
        [--servers uvicorn,aiohttp] [--workers 1,2] [--repeat 3] [--duration 3]
        [--connections 50] [--json out.json]

Every (server, worker count, loop, repetition) starts the server afresh on a
free loopback port:

* **uvicorn**: ``python -m uvicorn workers:app --workers N --loop SPEC``
  (one process for N=1, the multiprocess supervisor and N workers sharing one
  listening socket otherwise); ``SPEC`` is ``asyncio``, ``uvloop``, or an
  import string such as ``ferroloop:new_event_loop`` (``FERROLOOP_LOOP`` then
  picks the ferroloop kind). uvicorn's HTTP parser is its ``auto`` choice
  (httptools where installed, else h11), the same for every loop; the report
  says which.
* **aiohttp**: N processes of ``workers.py --serve-aiohttp PORT LOOP``, each
  ``web.run_app(..., reuse_port=True)`` on a loop from ``LOOP``'s
  ``new_event_loop()``; the kernel spreads connections over their sockets.

The app answers ``GET /`` with 13 bytes of text and two headers naming the
worker's pid and loop class. Before measuring, the harness makes requests on
new connections until every worker has answered (so all are serving, and on
the expected loop), then runs wrk once for ``--warmup`` seconds, unmeasured,
then for ``--duration`` seconds, measured: requests/s as wrk counts them.
Around the measured run it reads the workers' CPU time from /proc and the CPU
time of every other process on the machine (``foreign_share``: the share of
all CPUs that other work took -- this harness cannot make a shared machine
quiet, it can only say how loud it was); a run where that share exceeds
``--noisy-threshold`` is measured again, up to ``--noisy-retries`` times
(net.py's rule). Loops run in a rotated order in each repetition; medians
over the repetitions are reported, with ratios to uvloop.

wrk runs with one thread on the same machine: with 2 cores, 2 workers and wrk
share them, so "2 workers" measures scale-out under contention, not 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import common

HERE = Path(__file__).resolve().parent
SCRIPT = Path(__file__).resolve()

DEFAULT_LOOPS = "asyncio,uvloop,ferroloop,ferroloop-proactor"
DEFAULT_SERVERS = "uvicorn,aiohttp"
BASELINE = "uvloop"
BODY = b"Hello, World!"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
WRK_GRACE_S = 15.0
WRK_MARKER = "FERROLOOP-WRK "
WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %.0f, "duration_us": %.0f, '
      .. '"errors": {"connect": %.0f, "read": %.0f, "write": %.0f, '
      .. '"status": %.0f, "timeout": %.0f}, '
      .. '"latency_us": {"p50": %.0f, "p99": %.0f}}\n',
    'MARKER', summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("MARKER", WRK_MARKER)


# ---------------------------------------------------------------- the apps
# (module level: uvicorn imports ``workers:app`` in each worker)


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


async def app(scope, receive, send):
    """The ASGI app: lifespan accepted, ``GET`` anything -> 13 bytes."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"x-worker-pid", str(os.getpid()).encode()),
                (b"x-worker-loop", _loop_name().encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def serve_aiohttp(port: int, loop_name: str) -> None:
    """One aiohttp process on ``loop_name``'s loop, sharing ``port`` (SO_REUSEPORT)."""
    from aiohttp import web

    async def hello(request):
        return web.Response(
            body=BODY,
            content_type="text/plain",
            headers={"x-worker-pid": str(os.getpid()), "x-worker-loop": _loop_name()},
        )

    web_app = web.Application()
    web_app.router.add_get("/", hello)
    loop = common.import_loop_module(loop_name).new_event_loop()
    web.run_app(
        web_app,
        host="127.0.0.1",
        port=port,
        reuse_port=True,
        loop=loop,
        access_log=None,
        print=None,
        shutdown_timeout=2,
    )


# ---------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loop_env(loop_name: str) -> dict[str, str]:
    """``FERROLOOP_LOOP`` for ``ferroloop`` / ``ferroloop-KIND`` (selector by default)."""
    base, _, kind = loop_name.partition("-")
    return {"FERROLOOP_LOOP": kind or "selector"} if base == "ferroloop" else {}


def uvicorn_loop_spec(loop_name: str) -> str:
    """uvicorn's ``--loop`` for a loop name."""
    if loop_name in ("asyncio", "uvloop"):
        return loop_name  # uvicorn's own factories
    base, sep, _ = loop_name.partition("-")
    if sep and base != "ferroloop":
        raise ValueError(f"{loop_name}: only ferroloop takes a -KIND suffix here")
    return f"{base}:new_event_loop"


class Server:
    """The processes of one server run (all tagged, so cleanup finds workers)."""

    def __init__(self, server: str, workers: int, loop_name: str, log_dir: Path):
        self.server, self.workers, self.loop_name = server, workers, loop_name
        self.port = free_port()
        self.tag = uuid.uuid4().hex
        self.log = log_dir / f"{server}-{workers}-{loop_name}-{self.tag[:8]}.log"
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE", "PYTHONTRACEMALLOC", "FERROLOOP_LOOP"):
            env.pop(name, None)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p)
        env["FERROLOOP_BENCH_TAG"] = self.tag
        env.update(loop_env(self.loop_name))
        return env

    def start(self) -> None:
        if self.server == "uvicorn":
            argv = [sys.executable, "-m", "uvicorn", "workers:app", "--host", "127.0.0.1"]
            argv += ["--port", str(self.port), "--loop", uvicorn_loop_spec(self.loop_name)]
            argv += ["--no-access-log", "--log-level", "warning"]
            if self.workers > 1:
                argv += ["--workers", str(self.workers)]
            commands = [argv]
        elif self.server == "aiohttp":
            argv = [sys.executable, str(SCRIPT), "--serve-aiohttp", str(self.port)]
            commands = [argv + [self.loop_name]] * self.workers
        else:
            raise ValueError(self.server)
        with open(self.log, "ab") as out:
            for argv in commands:
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        cwd=HERE,
                        env=self.env(),
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def wait_ready(self) -> dict[int, str]:
        """Requests on new connections until every worker answered: pid -> loop class."""
        seen: dict[int, str] = {}
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(seen) < self.workers:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(seen)} of {self.workers} workers answered")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                try:
                    conn.request("GET", "/")
                    resp = conn.getresponse()
                    resp.read()
                    seen[int(resp.getheader("x-worker-pid"))] = resp.getheader("x-worker-loop")
                finally:
                    conn.close()
            except OSError:
                time.sleep(0.05)
        return seen

    def tagged_pids(self) -> list[int]:
        needle = f"FERROLOOP_BENCH_TAG={self.tag}".encode()
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(name))
            except OSError:
                continue
        return found

    def stop(self) -> list[int | None]:
        """SIGTERM, then SIGKILL what is left; the exit codes."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        for pid in self.tagged_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return [proc.returncode for proc in self.procs]


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process, in clock ticks."""
    ticks = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rpartition(")")[2].split()
            ticks[pid] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue
    return ticks


def run_wrk(port: int, seconds: int, connections: int) -> tuple[dict[str, Any], int]:
    """One wrk run; (its JSON counts, its pid)."""
    with tempfile.TemporaryDirectory(prefix="ferroloop-wrk-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_SCRIPT, encoding="utf-8")
        cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s"]
        cmd += ["-s", str(script), f"http://127.0.0.1:{port}/"]
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            out, err = proc.communicate(timeout=seconds + WRK_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)
            raise TimeoutError(f"wrk did not finish a {seconds} s run") from None
    result = None
    for line in out.splitlines():
        if line.startswith(WRK_MARKER):
            result = json.loads(line[len(WRK_MARKER) :])
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"wrk exited {proc.returncode}: {(err or out)[-500:]}")
    errors = {k: v for k, v in result["errors"].items() if v}
    if errors:
        raise RuntimeError(f"wrk reported errors: {errors}")
    if result["requests"] <= 0:
        raise RuntimeError(f"wrk completed no request: {result}")
    return result, proc.pid


def measure(server: str, workers: int, loop_name: str, args: Any, log_dir: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"server": server, "workers": workers, "loop": loop_name}
    srv = Server(server, workers, loop_name, log_dir)
    try:
        srv.start()
        seen = srv.wait_ready()
        rec["worker_loops"] = sorted(set(seen.values()))
        pids = sorted(seen)
        run_wrk(srv.port, args.warmup, args.connections)
        me = {os.getpid(), *srv.tagged_pids()}
        before = common.others_snapshot(me)
        ticks0 = cpu_ticks(pids)
        t0 = time.monotonic()
        result, wrk_pid = run_wrk(srv.port, args.duration, args.connections)
        wall = time.monotonic() - t0
        ticks1 = cpu_ticks(pids)
        after = common.others_snapshot(me | {wrk_pid})
        seconds = result["duration_us"] / 1e6
        used = [ticks1.get(pid, 0) - ticks0.get(pid, 0) for pid in pids]
        rec.update(
            status="ok",
            requests=int(result["requests"]),
            rps=result["requests"] / seconds,
            latency_us=result["latency_us"],
            worker_cpu_s=sum(used) / os.sysconf("SC_CLK_TCK"),
            # how evenly the kernel (shared socket or SO_REUSEPORT) spread the
            # load: the busiest worker's share of the workers' CPU time
            busiest_worker_share=max(used) / sum(used) if sum(used) else None,
            **common.foreign_cpu(before, after, wall),
        )
        rec["cpu_us_per_req"] = 1e6 * rec["worker_cpu_s"] / rec["requests"]
    except Exception as exc:  # noqa: BLE001 -- recorded, the run goes on
        rec.update(status="failed", error=f"{type(exc).__name__}: {exc}", log=srv.log_tail())
    finally:
        rec["exit_codes"] = srv.stop()
    return rec


# ---------------------------------------------------------------- report


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        return None
    values = [r["rps"] for r in ok]
    return {
        "rps": statistics.median(values),
        "spread_pct": common.spread_pct(values),
        "cpu_us_per_req": statistics.median(r["cpu_us_per_req"] for r in ok),
        "max_foreign_share": max(r.get("foreign_share") or 0.0 for r in ok),
        "busiest_worker_share": common.median_of(ok, "busiest_worker_share"),
        "runs": len(ok),
    }


def render(report: dict[str, Any]) -> str:
    cfg = report["config"]
    present = [n for n in cfg["loops"] if report["loops"][n]["available"]]
    out = common.header_lines(report, "Multi-process HTTP servers (benches/workers.py)")
    out.append(
        f"- wrk: 1 thread, {cfg['connections']} connections, {cfg['warmup']} s warm-up "
        f"+ {cfg['duration']} s measured per run; uvicorn HTTP parser: {cfg['uvicorn_http']}"
    )
    out.append("")
    rows = []
    results: dict[str, dict[str, Any]] = {}
    fail: dict[tuple[str, str], str] = {}
    for server in cfg["servers"]:
        for workers in cfg["workers"]:
            row = f"{server} x{workers}"
            rows.append((row, [server, str(workers)]))
            results[row] = {}
            for name in present:
                runs = [
                    r
                    for r in report["runs"]
                    if (r["server"], r["workers"], r["loop"]) == (server, workers, name)
                ]
                results[row][name] = summarize(runs)
                if results[row][name] is None:
                    fail[(row, name)] = common.failure_status(runs)
    pairs = [(n, BASELINE) for n in present if n != BASELINE] if BASELINE in present else []
    out.append("Requests/s (median), ratio to uvloop (higher is better):")
    out.append("")
    out.append(
        common.ratio_table(
            rows,
            present,
            results,
            "rps",
            lambda v: f"{v:,.0f}",
            pairs,
            ["server", "workers"],
            fail,
        )
    )
    out += ["", "Workers' CPU per request, µs (median; lower is better):", ""]
    out.append(
        common.ratio_table(
            rows,
            present,
            results,
            "cpu_us_per_req",
            lambda v: f"{v:.0f}",
            pairs,
            ["server", "workers"],
            fail,
        )
    )
    out += ["", "Spread of requests/s (half min..max over the repetitions, % of median) and"]
    out += ["the most any kept run's other processes took of all CPUs:", ""]
    header = ["server", "workers"] + [f"{n} spread / foreign" for n in present]
    table = []
    for row, lead in rows:
        cells = list(lead)
        for n in present:
            s = results[row][n]
            cells.append(
                "n/a"
                if s is None
                else f"{s['spread_pct']:.0f}% / {100 * s['max_foreign_share']:.0f}%"
            )
        table.append(cells)
    out.append(common.md_table(header, table, ["l"] + ["r"] * (len(header) - 1)))
    multi = [(row, lead) for row, lead in rows if int(lead[1]) > 1]
    if multi:
        out += ["", "The busiest worker's share of the workers' CPU time (median; 50% is an"]
        out += ["even spread over 2 workers):", ""]
        header = ["server", "workers"] + present
        table = []
        for row, lead in multi:
            cells = list(lead)
            for n in present:
                share = (results[row][n] or {}).get("busiest_worker_share")
                cells.append("n/a" if share is None else f"{100 * share:.0f}%")
            table.append(cells)
        out.append(common.md_table(header, table, ["l"] + ["r"] * (len(header) - 1)))
    out.append("")
    out += common.noise_lines(report)
    failed = [r for r in report["runs"] if r.get("status") != "ok"]
    if failed:
        out += ["", "Failed runs:"]
        out += [f"- {r['server']} x{r['workers']} {r['loop']}: {r.get('error')}" for r in failed]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--serve-aiohttp"]:
        serve_aiohttp(int(argv[1]), argv[2])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default=DEFAULT_LOOPS, help=f"(default {DEFAULT_LOOPS})")
    parser.add_argument("--servers", default=DEFAULT_SERVERS, help=f"(default {DEFAULT_SERVERS})")
    parser.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    parser.add_argument("--repeat", type=common.positive_int, default=3)
    parser.add_argument("--duration", type=common.positive_int, default=3, help="wrk seconds")
    parser.add_argument("--warmup", type=common.positive_int, default=1, help="wrk seconds")
    parser.add_argument("--connections", type=common.positive_int, default=50)
    parser.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    common.add_noise_options(parser)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (Debian/Ubuntu: apt-get install -y wrk)", file=sys.stderr)
        return 2
    loops = common.split_names(args.loops)
    servers = common.split_names(args.servers)
    worker_counts = [int(w) for w in common.split_names(args.workers)]
    try:
        import httptools  # noqa: F401

        uvicorn_http = "httptools"
    except ImportError:
        uvicorn_http = "h11"
    config = {
        "loops": loops,
        "servers": servers,
        "workers": worker_counts,
        "repeat": args.repeat,
        "duration": args.duration,
        "warmup": args.warmup,
        "connections": args.connections,
        "uvicorn_http": uvicorn_http,
        "noisy_threshold": args.noisy_threshold,
        "noisy_retries": args.noisy_retries,
        "command": " ".join([Path(sys.argv[0]).name, *argv]),
    }
    report = common.new_report(config, args.wait_idle)
    report["loops"], present = common.probe(loops)
    report["runs"] = []
    report["discarded_noisy_runs"] = discarded = []
    with tempfile.TemporaryDirectory(prefix="ferroloop-workers-") as tmp:
        for rep in range(args.repeat):
            for server in servers:
                for workers in worker_counts:
                    for name in common.rotated(present, rep):
                        label = f"{server} x{workers} {name}"
                        rec = common.measure_quietly(
                            functools.partial(measure, server, workers, name, args, Path(tmp)),
                            args,
                            discarded,
                            label,
                        )
                        rec["rep"] = rep
                        rec["bench"] = f"{server} x{workers}"
                        report["runs"].append(rec)
                        if rec["status"] == "ok":
                            common.log(
                                f"rep {rep + 1}/{args.repeat} {server} x{workers} {name}: "
                                f"{rec['rps']:,.0f} req/s, {rec['cpu_us_per_req']:.0f} µs CPU/req, "
                                f"others {100 * (rec.get('foreign_share') or 0):.0f}% of CPUs"
                            )
                        else:
                            common.log(
                                f"rep {rep + 1}/{args.repeat} {server} x{workers} {name}: "
                                f"FAILED {rec['error']}"
                            )
    common.finish_report(report, args.json)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
