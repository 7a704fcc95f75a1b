"""What later issues bring raises NotImplementedError naming the issue:
coroutine methods when awaited (as asyncio reports their errors), the
others when called."""

from __future__ import annotations

import asyncio
import inspect
import socket

import ferroloop
import pytest

NETWORKING = [
    ("create_connection", (lambda: None, "127.0.0.1", 1)),
    ("create_server", (lambda: None, "127.0.0.1", 0)),
    ("create_unix_connection", (lambda: None, "/nonexistent")),
    ("create_unix_server", (lambda: None, "/nonexistent")),
    ("create_datagram_endpoint", (lambda: None,)),
    ("connect_accepted_socket", (lambda: None, None)),
    ("start_tls", (None, None, None)),
    ("sendfile", (None, None)),
    ("sock_recv", ("SOCK", 1)),
    ("sock_recv_into", ("SOCK", bytearray(1))),
    ("sock_recvfrom", ("SOCK", 1)),
    ("sock_recvfrom_into", ("SOCK", bytearray(1))),
    ("sock_sendall", ("SOCK", b"x")),
    ("sock_sendto", ("SOCK", b"x", None)),
    ("sock_connect", ("SOCK", None)),
    ("sock_accept", ("SOCK",)),
    ("sock_sendfile", ("SOCK", None)),
]
PROCESSES = [
    ("connect_read_pipe", (lambda: None, None)),
    ("connect_write_pipe", (lambda: None, None)),
    ("subprocess_exec", (lambda: None, "true")),
    ("subprocess_shell", (lambda: None, "true")),
]


@pytest.fixture
def floop():
    lp = ferroloop.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def sock():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a
    a.close()
    b.close()


def _args(args, sock):
    return tuple(sock if a == "SOCK" else a for a in args)


@pytest.mark.parametrize(
    "name,args,issue",
    [(n, a, "issue #3 (networking on the selector loop)") for n, a in NETWORKING]
    + [(n, a, "issue #4 (pipes, subprocesses and signals)") for n, a in PROCESSES],
    ids=[n for n, _ in NETWORKING + PROCESSES],
)
def test_coroutine_methods_raise_when_awaited(floop, sock, name, args, issue):
    method = getattr(floop, name)
    # Like asyncio's, these are coroutine functions: calling does not raise.
    assert inspect.iscoroutinefunction(method)
    assert inspect.iscoroutinefunction(getattr(asyncio.BaseEventLoop, name))
    coro = method(*_args(args, sock))
    with pytest.raises(NotImplementedError) as info:
        floop.run_until_complete(coro)
    assert str(info.value) == (
        f"ferroloop: loop.{name}() is not implemented yet; it comes with {issue}"
    )


@pytest.mark.parametrize("name", ["add_signal_handler", "remove_signal_handler"])
def test_signal_handlers_raise_when_called(floop, name):
    import signal

    args = (signal.SIGUSR1, print) if name == "add_signal_handler" else (signal.SIGUSR1,)
    with pytest.raises(NotImplementedError) as info:
        getattr(floop, name)(*args)
    assert str(info.value) == (
        f"ferroloop: loop.{name}() is not implemented yet; it comes with "
        "issue #4 (pipes, subprocesses and signals)"
    )


def test_high_level_apis_report_the_issue(floop):
    async def main():
        with pytest.raises(NotImplementedError, match="issue #3"):
            await asyncio.open_connection("127.0.0.1", 1)
        with pytest.raises(NotImplementedError, match="issue #4"):
            await asyncio.create_subprocess_exec("true")
        return "ok"

    assert floop.run_until_complete(main()) == "ok"


def test_implemented_helpers_still_work(floop):
    # getaddrinfo / getnameinfo go through the executor and need no socket
    # support from the loop.
    async def main():
        infos = await floop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        name = await floop.getnameinfo(
            ("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        )
        return infos[0][4], name

    assert floop.run_until_complete(main()) == (("127.0.0.1", 80), ("127.0.0.1", "80"))
