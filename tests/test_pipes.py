"""connect_read_pipe / connect_write_pipe over os.pipe(): data, EOF, the
peer closing, write_eof, flow control and extra info, on asyncio and on
ferroloop's native backends."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest
from conftest import collect, fd_count, run_coro, until


@pytest.fixture
def pipe():
    """(read file, write file), unbuffered; closed at teardown if still open."""
    r, w = os.pipe()
    rf = os.fdopen(r, "rb", buffering=0)
    wf = os.fdopen(w, "wb", buffering=0)
    yield rf, wf
    for f in (rf, wf):
        try:
            f.close()
        except OSError:
            pass


class PipeRecorder(asyncio.Protocol):
    def __init__(self, loop):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.lost = loop.create_future()
        self.paused = loop.create_future()
        self.resumed = loop.create_future()
        self.buffer_at_pause = None
        self.lost_count = 0

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def pause_writing(self):
        self.events.append("pause")
        self.buffer_at_pause = self.transport.get_write_buffer_size()
        self.paused.done() or self.paused.set_result(None)

    def resume_writing(self):
        self.events.append("resume")
        self.resumed.done() or self.resumed.set_result(None)

    def connection_lost(self, exc):
        self.lost_count += 1
        self.events.append(("lost", type(exc).__name__ if exc is not None else None))
        if not self.lost.done():
            self.lost.set_result(exc)


def test_read_pipe_data_then_eof(io_loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await io_loop.connect_read_pipe(lambda: PipeRecorder(io_loop), rf)
        assert isinstance(tr, asyncio.ReadTransport)
        assert tr.get_extra_info("pipe") is rf
        assert tr.is_reading()
        for i in range(5):
            wf.write(b"chunk %d;" % i)
            await until(lambda i=i: proto.data.endswith(b"chunk %d;" % i))
        tr.pause_reading()
        assert not tr.is_reading()
        wf.write(b"while paused;")
        await asyncio.sleep(0.02)
        assert not proto.data.endswith(b"while paused;")
        tr.resume_reading()
        await until(lambda: proto.data.endswith(b"while paused;"))
        wf.close()  # the peer closes: EOF
        assert await proto.lost is None
        return bytes(proto.data), proto.events, proto.lost_count, rf.closed

    data, events, count, closed = run_coro(io_loop, main())
    assert data == b"".join(b"chunk %d;" % i for i in range(5)) + b"while paused;"
    assert events == ["made", "data", "eof", ("lost", None)]
    assert count == 1
    assert closed  # the transport closes the pipe it was given


def test_read_pipe_close_from_our_side(io_loop, pipe):
    rf, wf = pipe

    async def main():
        tr, proto = await io_loop.connect_read_pipe(lambda: PipeRecorder(io_loop), rf)
        fd = rf.fileno()
        wf.write(b"x")
        await until(lambda: proto.data)
        assert io_loop._selector.get_key(fd).events == 1
        tr.close()
        assert tr.is_closing()
        tr.close()
        await proto.lost
        await asyncio.sleep(0.01)
        with pytest.raises(KeyError):
            io_loop._selector.get_key(fd)
        return proto.events, proto.lost_count, rf.closed

    events, count, closed = run_coro(io_loop, main())
    assert events == ["made", "data", ("lost", None)]
    assert count == 1
    assert closed


def test_write_pipe_data_and_write_eof(io_loop, pipe):
    rf, wf = pipe

    async def main():
        wtr, wproto = await io_loop.connect_write_pipe(lambda: PipeRecorder(io_loop), wf)
        _rtr, rproto = await io_loop.connect_read_pipe(lambda: PipeRecorder(io_loop), rf)
        assert isinstance(wtr, asyncio.WriteTransport)
        assert wtr.get_extra_info("pipe") is wf
        assert wtr.can_write_eof()
        wtr.write(b"hello ")
        wtr.writelines([b"pipe ", b"world"])
        wtr.write_eof()
        assert wtr.is_closing()
        assert await rproto.lost is None
        assert await wproto.lost is None
        return bytes(rproto.data), rproto.events, wproto.events

    data, r_events, w_events = run_coro(io_loop, main())
    assert data == b"hello pipe world"
    assert r_events == ["made", "data", "eof", ("lost", None)]
    assert w_events == ["made", ("lost", None)]


def test_write_pipe_peer_closes_with_empty_buffer(io_loop, pipe):
    rf, wf = pipe

    async def main():
        wtr, wproto = await io_loop.connect_write_pipe(lambda: PipeRecorder(io_loop), wf)
        wtr.write(b"some")
        await asyncio.sleep(0.01)
        assert wtr.get_write_buffer_size() == 0
        rf.close()  # nobody reads any more
        exc = await asyncio.wait_for(wproto.lost, 5)
        return exc, wproto.events, wproto.lost_count

    exc, events, count = run_coro(io_loop, main())
    assert exc is None
    assert events == ["made", ("lost", None)]
    assert count == 1


def test_write_pipe_peer_closes_with_pending_data(io_loop, pipe):
    rf, wf = pipe

    async def main():
        wtr, wproto = await io_loop.connect_write_pipe(lambda: PipeRecorder(io_loop), wf)
        wtr.write(b"x" * (1 << 20))  # far more than the pipe holds
        assert wtr.get_write_buffer_size() > 0
        await asyncio.sleep(0.01)
        rf.close()
        exc = await asyncio.wait_for(wproto.lost, 5)
        return exc, wproto.events, wproto.lost_count

    exc, events, count = run_coro(io_loop, main())
    assert isinstance(exc, BrokenPipeError)
    assert events == ["made", "pause", ("lost", "BrokenPipeError")]
    assert count == 1


def test_write_pipe_flow_control(io_loop, pipe):
    rf, wf = pipe

    async def main():
        wtr, wproto = await io_loop.connect_write_pipe(lambda: PipeRecorder(io_loop), wf)
        wtr.set_write_buffer_limits(high=32 * 1024, low=8 * 1024)
        assert wtr.get_write_buffer_limits() == (8 * 1024, 32 * 1024)
        total = 0
        for _ in range(100):
            wtr.write(b"f" * 16384)
            total += 16384
            if wproto.paused.done():
                break
        assert wproto.paused.done()
        assert wproto.buffer_at_pause > 32 * 1024
        assert wtr.get_write_buffer_size() > 0
        # Now a (slow-starting) reader drains the pipe.
        _rtr, rproto = await io_loop.connect_read_pipe(lambda: PipeRecorder(io_loop), rf)
        await asyncio.wait_for(wproto.resumed, 5)
        await until(lambda: len(rproto.data) == total)
        assert wtr.get_write_buffer_size() == 0
        wtr.close()
        await rproto.lost
        await wproto.lost
        return wproto.events, rproto.events

    w_events, r_events = run_coro(io_loop, main())
    assert w_events == ["made", "pause", "resume", ("lost", None)]
    assert r_events == ["made", "data", "eof", ("lost", None)]


def test_ten_megabytes_through_a_pipe(io_loop, pipe):
    rf, wf = pipe
    payload = os.urandom(10 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()

    async def main():
        reader = asyncio.StreamReader(limit=1 << 20)
        await io_loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rf)
        wtr, _wproto = await io_loop.connect_write_pipe(asyncio.Protocol, wf)

        async def write():
            view = memoryview(payload)
            for start in range(0, len(payload), 1 << 20):
                wtr.write(view[start : start + (1 << 20)])
                # Bounded buffering: wait while more than 4 MB is queued.
                while wtr.get_write_buffer_size() > 4 << 20:
                    await asyncio.sleep(0.001)
            wtr.write_eof()

        writer = asyncio.ensure_future(write())
        h = hashlib.sha256()
        n = 0
        while chunk := await reader.read(1 << 18):
            h.update(chunk)
            n += len(chunk)
        await writer
        return n, h.hexdigest()

    assert run_coro(io_loop, main(), timeout=20) == (len(payload), digest)


def test_pipe_transports_on_socketpair(io_loop):
    a, b = socket.socketpair()

    async def main():
        _rtr, rproto = await io_loop.connect_read_pipe(lambda: PipeRecorder(io_loop), a)
        wtr, wproto = await io_loop.connect_write_pipe(lambda: PipeRecorder(io_loop), b)
        wtr.write(b"over a socket")
        await until(lambda: rproto.data == b"over a socket")
        wtr.close()
        await wproto.lost
        await rproto.lost
        return rproto.events, wproto.events

    try:
        r_events, w_events = run_coro(io_loop, main())
    finally:
        a.close()
        b.close()
    assert r_events == ["made", "data", "eof", ("lost", None)]
    assert w_events == ["made", ("lost", None)]


def test_pipe_transports_refuse_regular_files(io_loop, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"data")

    async def main(rf, af):
        msgs = []
        with pytest.raises(ValueError) as info:
            await io_loop.connect_read_pipe(asyncio.Protocol, rf)
        msgs.append(str(info.value))
        with pytest.raises(ValueError) as info:
            await io_loop.connect_write_pipe(asyncio.Protocol, af)
        msgs.append(str(info.value))
        return msgs

    with open(path, "rb") as rf, open(path, "ab") as af:
        msgs = run_coro(io_loop, main(rf, af))
    assert msgs == [
        "Pipe transport is for pipes/sockets only.",
        "Pipe transport is only for pipes, sockets and character devices",
    ]


def test_no_fd_leak_after_pipe_transports(io_loop):
    async def main():
        for _ in range(20):
            r, w = os.pipe()
            rf = os.fdopen(r, "rb", buffering=0)
            wf = os.fdopen(w, "wb", buffering=0)
            _rtr, rproto = await io_loop.connect_read_pipe(lambda: PipeRecorder(io_loop), rf)
            wtr, wproto = await io_loop.connect_write_pipe(lambda: PipeRecorder(io_loop), wf)
            wtr.write(b"abc")
            wtr.write_eof()
            await rproto.lost
            await wproto.lost
        return True

    collect()
    before = fd_count()
    assert run_coro(io_loop, main())
    collect()
    assert fd_count() == before
