"""A table of wrong calls across the event loop's public API, for
``test_bad_input.py``; run as a script, it makes calls on one loop kind and
prints one JSON line per call with the exception type it raised (or "ok").

    python bad_calls.py KIND

Each entry is (name, function of the loop, kind of call): "sync" calls are
made directly, "async" ones are awaited on the running loop ("debug": the
same in debug mode, where asyncio checks that sockets are non-blocking;
without it, a blocking socket blocks the loop), "closed" ones are made on a
closed loop. Sockets and files made for a call are closed
after it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import socket
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import make_loop

OPEN = []  # what the current call made, closed after it


def sock(kind=socket.SOCK_STREAM, blocking=False, family=socket.AF_INET):
    s = socket.socket(family, kind)
    s.setblocking(blocking)
    OPEN.append(s)
    return s


def pair(blocking=False):
    a, b = socket.socketpair()
    a.setblocking(blocking)
    b.setblocking(blocking)
    OPEN.extend((a, b))
    return a, b


def listener():
    s = sock()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def udp():
    s = sock(socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def noop(*args):
    pass


async def coro_fn():
    pass


class NotAProtocol:
    pass


def closed_sock():
    s = sock()
    s.close()
    return s


def a_file():
    f = tempfile.TemporaryFile()  # noqa: SIM115 - closed after the call (OPEN)
    OPEN.append(f)
    return f


def text_file():
    f = open(os.devnull)  # noqa: SIM115 - closed after the call (OPEN)
    OPEN.append(f)
    return f


ENTRIES = []


def add(name, fn, how="sync"):
    ENTRIES.append((name, fn, how))


# Scheduling.
add("call_soon non-callable", lambda lp: lp.call_soon(42))
add("call_soon coroutine function", lambda lp: lp.call_soon(coro_fn))
add("call_soon coroutine object", lambda lp: lp.call_soon(coro_fn()))
add("call_soon context not a Context", lambda lp: lp.call_soon(noop, context=1))
add("call_soon unknown keyword", lambda lp: lp.call_soon(noop, when=1))
add("call_soon no arguments", lambda lp: lp.call_soon())
add("call_later delay str", lambda lp: lp.call_later("1", noop))
add("call_later delay None", lambda lp: lp.call_later(None, noop))
add("call_later huge int delay", lambda lp: lp.call_later(10**400, noop))
add("call_later non-callable", lambda lp: lp.call_later(1, 42))
add("call_later coroutine function", lambda lp: lp.call_later(1, coro_fn))
add("call_later no callback", lambda lp: lp.call_later(1))
add("call_at non-callable", lambda lp: lp.call_at(1, None))
add("call_at coroutine function", lambda lp: lp.call_at(1, coro_fn))
add("call_soon_threadsafe non-callable", lambda lp: lp.call_soon_threadsafe(42))
add("call_soon_threadsafe coroutine function", lambda lp: lp.call_soon_threadsafe(coro_fn))
add(
    "call_soon_threadsafe context not a Context",
    lambda lp: lp.call_soon_threadsafe(noop, context=1),
)
add("create_task non-coroutine", lambda lp: lp.create_task(42))
add("create_task plain function", lambda lp: lp.create_task(noop))
add("run_until_complete non-awaitable", lambda lp: lp.run_until_complete(42))
add("run_until_complete None", lambda lp: lp.run_until_complete(None))
add("run_in_executor non-callable", lambda lp: lp.run_in_executor(None, 42), "async")
add("run_in_executor coroutine function", lambda lp: lp.run_in_executor(None, coro_fn), "async")
add("set_default_executor not an executor", lambda lp: lp.set_default_executor(42))
add("set_exception_handler non-callable", lambda lp: lp.set_exception_handler(42))
add("set_task_factory non-callable", lambda lp: lp.set_task_factory(42))
add("call_exception_handler not a dict", lambda lp: lp.call_exception_handler(42))
add("slow_callback_duration str", lambda lp: setattr(lp, "slow_callback_duration", "x"))
add("run_forever while running", lambda lp: lp.run_forever(), "async-direct")
add("run_until_complete while running", lambda lp: lp.run_until_complete(coro_fn()), "async-direct")

# Watching descriptors.
add("add_reader negative fd", lambda lp: lp.add_reader(-1, noop))
add("add_reader str", lambda lp: lp.add_reader("x", noop))
add("add_reader float", lambda lp: lp.add_reader(1.5, noop))
add("add_reader object without fileno", lambda lp: lp.add_reader(object(), noop))
add("add_reader huge fd", lambda lp: lp.add_reader(2**40, noop))
add("add_reader closed socket", lambda lp: lp.add_reader(closed_sock(), noop))
add("add_reader not-open fd", lambda lp: lp.add_reader(999_999, noop))
add("add_reader regular file", lambda lp: lp.add_reader(a_file(), noop))
add("add_reader non-callable", lambda lp: lp.add_reader(pair()[0], 42))
add("add_writer negative fd", lambda lp: lp.add_writer(-1, noop))
add("add_writer str", lambda lp: lp.add_writer("x", noop))
add("add_writer huge fd", lambda lp: lp.add_writer(2**40, noop))
add("remove_reader str", lambda lp: lp.remove_reader("x"))
add("remove_reader negative fd", lambda lp: lp.remove_reader(-1))
add("remove_reader unwatched fd", lambda lp: lp.remove_reader(pair()[0]))
add("remove_writer object without fileno", lambda lp: lp.remove_writer(object()))
add("remove_writer huge fd", lambda lp: lp.remove_writer(2**40))

# Low-level socket operations.
add("sock_recv blocking socket", lambda lp: lp.sock_recv(pair(blocking=True)[0], 10), "debug")
add("sock_recv not a socket", lambda lp: lp.sock_recv(42, 10), "async")
add("sock_recv negative size", lambda lp: lp.sock_recv(pair()[0], -1), "async")
add("sock_recv size str", lambda lp: lp.sock_recv(pair()[0], "10"), "async")
add("sock_recv huge size", lambda lp: lp.sock_recv(pair()[0], 2**80), "async")
add("sock_recv closed socket", lambda lp: lp.sock_recv(closed_sock(), 10), "async")
add("sock_recv_into bytes", lambda lp: lp.sock_recv_into(pair()[0], b"xx"), "async")
add("sock_recv_into int", lambda lp: lp.sock_recv_into(pair()[0], 10), "async")
add(
    "sock_recv_into non-contiguous",
    lambda lp: lp.sock_recv_into(pair()[0], memoryview(bytearray(10))[::2]),
    "async",
)
add(
    "sock_recv_into blocking socket",
    lambda lp: lp.sock_recv_into(pair(True)[0], bytearray(4)),
    "debug",
)
add("sock_sendall str", lambda lp: lp.sock_sendall(pair()[0], "text"), "async")
add("sock_sendall int", lambda lp: lp.sock_sendall(pair()[0], 10), "async")
add("sock_sendall blocking socket", lambda lp: lp.sock_sendall(pair(True)[0], b"x"), "debug")
add("sock_sendall closed socket", lambda lp: lp.sock_sendall(closed_sock(), b"x"), "async")
add(
    "sock_sendall non-contiguous",
    lambda lp: lp.sock_sendall(pair()[0], memoryview(bytearray(10))[::2]),
    "async",
)
add("sock_sendall not connected", lambda lp: lp.sock_sendall(sock(), b"x"), "async")
add("sock_accept blocking socket", lambda lp: lp.sock_accept(sock(blocking=True)), "debug")
add("sock_accept not listening", lambda lp: lp.sock_accept(sock()), "async")
add("sock_accept udp socket", lambda lp: lp.sock_accept(udp()), "async")
add(
    "sock_connect blocking socket",
    lambda lp: lp.sock_connect(sock(blocking=True), ("127.0.0.1", 1)),
    "debug",
)
add("sock_connect refused", lambda lp: lp.sock_connect(sock(), ("127.0.0.1", 1)), "async")
add("sock_connect bad address type", lambda lp: lp.sock_connect(sock(), "127.0.0.1"), "async")
add("sock_connect bad port", lambda lp: lp.sock_connect(sock(), ("127.0.0.1", 99999)), "async")
add("sock_connect port str", lambda lp: lp.sock_connect(sock(), ("127.0.0.1", "x")), "async")
add(
    "sock_recvfrom blocking",
    lambda lp: lp.sock_recvfrom(sock(socket.SOCK_DGRAM, blocking=True), 10),
    "debug",
)
add("sock_recvfrom negative size", lambda lp: lp.sock_recvfrom(udp(), -1), "async")
add("sock_sendto bad address", lambda lp: lp.sock_sendto(udp(), b"x", "nowhere"), "async")
add("sock_sendto str data", lambda lp: lp.sock_sendto(udp(), "x", ("127.0.0.1", 9)), "async")
add("sock_sendfile not a file", lambda lp: lp.sock_sendfile(pair()[0], 42), "async")
add("sock_sendfile text file", lambda lp: lp.sock_sendfile(pair()[0], text_file()), "async")
add("sock_sendfile negative offset", lambda lp: lp.sock_sendfile(pair()[0], a_file(), -1), "async")
add("sock_sendfile count zero", lambda lp: lp.sock_sendfile(pair()[0], a_file(), 0, 0), "async")
add("sock_sendfile udp socket", lambda lp: lp.sock_sendfile(udp(), a_file()), "async")

# Connections and servers.
add(
    "create_connection no host nor sock", lambda lp: lp.create_connection(asyncio.Protocol), "async"
)
add(
    "create_connection host and sock",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, sock=sock()),
    "async",
)
add(
    "create_connection refused",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1),
    "async",
)
add(
    "create_connection bad port",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 99999),
    "async",
)
add(
    "create_connection port str",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", "x"),
    "async",
)
add(
    "create_connection server_hostname without ssl",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, server_hostname="a"),
    "async",
)
add(
    "create_connection ssl_handshake_timeout without ssl",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, ssl_handshake_timeout=1),
    "async",
)
add(
    "create_connection ssl_shutdown_timeout without ssl",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, ssl_shutdown_timeout=1),
    "async",
)
add(
    "create_connection ssl not a context",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, ssl=42),
    "async",
)
add(
    "create_connection udp sock",
    lambda lp: lp.create_connection(asyncio.Protocol, sock=udp()),
    "async",
)
add(
    "create_connection factory not callable",
    lambda lp: lp.create_connection(42, sock=pair()[0]),
    "async",
)
add(
    "create_connection happy_eyeballs_delay str",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, happy_eyeballs_delay="x"),
    "async",
)
add(
    "create_connection local_addr bad",
    lambda lp: lp.create_connection(asyncio.Protocol, "127.0.0.1", 1, local_addr=("256.0.0.1", 0)),
    "async",
)
add(
    "create_server host and sock",
    lambda lp: lp.create_server(asyncio.Protocol, "127.0.0.1", 0, sock=listener()),
    "async",
)
add(
    "create_server bad port",
    lambda lp: lp.create_server(asyncio.Protocol, "127.0.0.1", 99999),
    "async",
)
add(
    "create_server negative port",
    lambda lp: lp.create_server(asyncio.Protocol, "127.0.0.1", -1),
    "async",
)
add(
    "create_server ssl_handshake_timeout without ssl",
    lambda lp: lp.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl_handshake_timeout=1),
    "async",
)
add("create_server udp sock", lambda lp: lp.create_server(asyncio.Protocol, sock=udp()), "async")
add(
    "create_server bad host",
    lambda lp: lp.create_server(asyncio.Protocol, "256.256.256.256", 0),
    "async",
)
add(
    "create_server backlog str",
    lambda lp: lp.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog="x"),
    "async",
)
add(
    "create_unix_connection no path",
    lambda lp: lp.create_unix_connection(asyncio.Protocol),
    "async",
)
add(
    "create_unix_connection missing path",
    lambda lp: lp.create_unix_connection(asyncio.Protocol, "/nonexistent/ferroloop.sock"),
    "async",
)
add(
    "create_unix_server path too long",
    lambda lp: lp.create_unix_server(asyncio.Protocol, "/tmp/" + "x" * 200),
    "async",
)
add(
    "create_unix_server tcp sock",
    lambda lp: lp.create_unix_server(asyncio.Protocol, sock=listener()),
    "async",
)
add(
    "create_datagram_endpoint nothing",
    lambda lp: lp.create_datagram_endpoint(asyncio.DatagramProtocol),
    "async",
)
add(
    "create_datagram_endpoint tcp sock",
    lambda lp: lp.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock()),
    "async",
)
add(
    "create_datagram_endpoint bad family",
    lambda lp: lp.create_datagram_endpoint(asyncio.DatagramProtocol, family=12345),
    "async",
)
add(
    "create_datagram_endpoint local_addr str",
    lambda lp: lp.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr="x"),
    "async",
)
add(
    "create_datagram_endpoint reuse_address",
    lambda lp: lp.create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), reuse_address=True
    ),
    "async",
)
add(
    "connect_accepted_socket not a socket",
    lambda lp: lp.connect_accepted_socket(asyncio.Protocol, 42),
    "async",
)
add(
    "connect_accepted_socket udp",
    lambda lp: lp.connect_accepted_socket(asyncio.Protocol, udp()),
    "async",
)
add("start_server limit 0", lambda lp: asyncio.start_server(noop, "127.0.0.1", 0, limit=0), "async")
add(
    "open_connection limit negative",
    lambda lp: asyncio.open_connection(sock=pair()[0], limit=-1),
    "async",
)
add("start_tls not a transport", lambda lp: lp.start_tls(42, asyncio.Protocol(), None), "async")
add(
    "getaddrinfo bad port",
    lambda lp: lp.getaddrinfo("127.0.0.1", "nonexistent-service-xyz"),
    "async",
)
add("getaddrinfo bad family", lambda lp: lp.getaddrinfo("127.0.0.1", 80, family=12345), "async")
add("getnameinfo bad sockaddr", lambda lp: lp.getnameinfo("x"), "async")
add("getnameinfo bad flags", lambda lp: lp.getnameinfo(("127.0.0.1", 80), "x"), "async")

# Pipes and subprocesses.
add("connect_read_pipe not a pipe", lambda lp: lp.connect_read_pipe(asyncio.Protocol, 42), "async")
add(
    "connect_read_pipe regular file",
    lambda lp: lp.connect_read_pipe(asyncio.Protocol, a_file()),
    "async",
)
add(
    "connect_write_pipe regular file",
    lambda lp: lp.connect_write_pipe(asyncio.Protocol, a_file()),
    "async",
)
add(
    "subprocess_exec no program", lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol), "async"
)
add(
    "subprocess_exec missing program",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "/nonexistent/prog"),
    "async",
)
add(
    "subprocess_exec int argument",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", 42),
    "async",
)
add(
    "subprocess_exec universal_newlines",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", universal_newlines=True),
    "async",
)
add(
    "subprocess_exec shell=True",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", shell=True),
    "async",
)
add(
    "subprocess_exec bufsize 1",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", bufsize=1),
    "async",
)
add(
    "subprocess_exec text",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", text=True),
    "async",
)
add(
    "subprocess_exec encoding",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", encoding="utf-8"),
    "async",
)
add(
    "subprocess_shell list",
    lambda lp: lp.subprocess_shell(asyncio.SubprocessProtocol, ["true"]),
    "async",
)
add(
    "subprocess_shell shell=False",
    lambda lp: lp.subprocess_shell(asyncio.SubprocessProtocol, "true", shell=False),
    "async",
)
add(
    "subprocess_shell bad stdin",
    lambda lp: lp.subprocess_shell(asyncio.SubprocessProtocol, "true", stdin="x"),
    "async",
)
add(
    "subprocess_exec bad cwd",
    lambda lp: lp.subprocess_exec(asyncio.SubprocessProtocol, "true", cwd="/nonexistent"),
    "async",
)
add(
    "create_subprocess_exec missing program",
    lambda lp: asyncio.create_subprocess_exec("/nonexistent/prog"),
    "async",
)

# Signals.
add("add_signal_handler SIGKILL", lambda lp: lp.add_signal_handler(signal.SIGKILL, noop))
add("add_signal_handler 0", lambda lp: lp.add_signal_handler(0, noop))
add("add_signal_handler out of range", lambda lp: lp.add_signal_handler(100000, noop))
add("add_signal_handler str", lambda lp: lp.add_signal_handler("SIGINT", noop))
add("add_signal_handler non-callable", lambda lp: lp.add_signal_handler(signal.SIGUSR1, 42))
add(
    "add_signal_handler coroutine function",
    lambda lp: lp.add_signal_handler(signal.SIGUSR1, coro_fn),
)
add("remove_signal_handler out of range", lambda lp: lp.remove_signal_handler(100000))
add("remove_signal_handler str", lambda lp: lp.remove_signal_handler("SIGINT"))
add("remove_signal_handler SIGKILL", lambda lp: lp.remove_signal_handler(signal.SIGKILL))
add(
    "add_signal_handler from another thread",
    lambda lp: in_thread(lambda: lp.add_signal_handler(signal.SIGUSR1, noop)),
)

# A closed loop.
for _name, _call in [
    ("call_soon", lambda lp: lp.call_soon(noop)),
    ("call_later", lambda lp: lp.call_later(1, noop)),
    ("call_at", lambda lp: lp.call_at(1, noop)),
    ("call_soon_threadsafe", lambda lp: lp.call_soon_threadsafe(noop)),
    ("run_forever", lambda lp: lp.run_forever()),
    ("run_until_complete", lambda lp: lp.run_until_complete(asyncio.sleep(0))),
    ("add_reader", lambda lp: lp.add_reader(pair()[0], noop)),
    ("add_writer", lambda lp: lp.add_writer(pair()[0], noop)),
    ("remove_reader", lambda lp: lp.remove_reader(pair()[0])),
    ("create_task", lambda lp: lp.create_task(asyncio.sleep(0))),
    ("run_in_executor", lambda lp: lp.run_in_executor(None, noop)),
    ("add_signal_handler", lambda lp: lp.add_signal_handler(signal.SIGUSR1, noop)),
    ("create_future", lambda lp: lp.create_future()),
    ("time", lambda lp: lp.time()),
    ("close again", lambda lp: lp.close()),
    ("shutdown_asyncgens", lambda lp: lp.run_until_complete(lp.shutdown_asyncgens())),
]:
    add(f"closed loop: {_name}", _call, "closed")


def in_thread(fn):
    box = []

    def target():
        try:
            fn()
            box.append(None)
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller
            box.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if box[0] is not None:
        raise box[0]


def outcome(exc):
    return "ok" if exc is None else type(exc).__name__


def run(kind):
    for name, fn, how in ENTRIES:
        # A call that hangs ends the run with its traceback.
        faulthandler.dump_traceback_later(20, exit=True)
        loop = make_loop(kind)
        if how == "debug":
            loop.set_debug(True)
        loop.set_exception_handler(lambda lp, ctx: None)
        exc = None
        try:
            if how == "closed":
                loop.close()
                res = fn(loop)
                if asyncio.iscoroutine(res):
                    res.close()
            elif how == "sync":
                res = fn(loop)
                if hasattr(res, "cancel"):
                    res.cancel()
            elif how == "async-direct":

                async def direct(fn=fn, loop=loop):
                    fn(loop)

                loop.run_until_complete(direct())
            else:

                async def awaited(fn=fn, loop=loop):
                    res = fn(loop)
                    if asyncio.iscoroutine(res) or asyncio.isfuture(res):
                        res = await asyncio.wait_for(res, 10)
                    if isinstance(res, tuple) and res and hasattr(res[0], "close"):
                        res[0].close()
                    elif hasattr(res, "close") and not isinstance(res, bytes):
                        res.close()
                        if hasattr(res, "wait_closed"):
                            await res.wait_closed()

                loop.run_until_complete(awaited())
        except BaseException as e:  # noqa: BLE001 - the exception is the result
            exc = e
        finally:
            for o in OPEN:
                o.close()
            OPEN.clear()
            if not loop.is_closed():
                loop.remove_signal_handler(signal.SIGUSR1)
                loop.close()
        faulthandler.cancel_dump_traceback_later()
        print(json.dumps({"name": name, "outcome": outcome(exc)}), flush=True)
    print(json.dumps({"done": len(ENTRIES)}), flush=True)


if __name__ == "__main__":
    run(sys.argv[1])
