"""TLS over loopback: ssl= on servers and clients (protocols and streams),
start_tls upgrades, handshake failures and the TLS extra info, on asyncio
and on ferroloop (asyncio's sslproto runs unchanged on the native core).

The certificate: made at test time (trustme if installed, else the openssl
command line), else CPython's own test certificate for "localhost"."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import subprocess

import pytest
from conftest import run_coro

HOST = "127.0.0.1"
NAME = "localhost"


def _make_with_trustme(directory):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(NAME, HOST)
    chain = os.path.join(directory, "chain.pem")
    cafile = os.path.join(directory, "ca.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(chain)
    ca.cert_pem.write_to_path(cafile)
    return chain, None, cafile


def _make_with_openssl(directory):
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    cmd = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={NAME}",
        "-addext", f"subjectAltName=DNS:{NAME},IP:{HOST}",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return cert, key, cert  # self-signed: the certificate is its own CA


def _cpython_test_cert():
    try:
        import test
    except ImportError:
        return None
    base = os.path.dirname(test.__file__)
    for directory in (os.path.join(base, "certdata"), base):
        path = os.path.join(directory, "keycert.pem")  # self-signed, CN=localhost
        if os.path.exists(path):
            return path, None, path
    return None


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tls"))
    try:
        return _make_with_trustme(directory)
    except ImportError:
        pass
    files = _make_with_openssl(directory) or _cpython_test_cert()
    if files is None:
        pytest.skip("no way to get a test certificate (trustme, openssl, CPython's test data)")
    return files


@pytest.fixture
def server_ctx(cert_files):
    chain, key, _ = cert_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(chain, key)
    return ctx


@pytest.fixture
def client_ctx(cert_files):
    _, _, cafile = cert_files
    return ssl.create_default_context(cafile=cafile)


def tls_info(transport):
    sslobj = transport.get_extra_info("ssl_object")
    cipher = transport.get_extra_info("cipher")
    peercert = transport.get_extra_info("peercert")
    return {
        "ssl_object": type(sslobj).__name__,
        "cipher_is_current": cipher == sslobj.cipher() and len(cipher) == 3,
        "version": sslobj.version(),
        "peercert_subject": dict(x[0] for x in peercert["subject"]) if peercert else peercert,
        "compression": transport.get_extra_info("compression"),
        "sslcontext": type(transport.get_extra_info("sslcontext")).__name__,
        "socket": transport.get_extra_info("socket") is not None,
        "is_transport": isinstance(transport, asyncio.Transport),
        "can_write_eof": transport.can_write_eof(),
    }


def test_tls_echo_with_streams(io_loop, server_ctx, client_ctx):
    payload = os.urandom(2 * 1024 * 1024)
    infos = {}

    async def handle(reader, writer):
        infos["server"] = tls_info(writer.transport)
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client_ctx, server_hostname=NAME
        )
        infos["client"] = tls_info(writer.transport)

        async def send():
            view = memoryview(payload)
            for i in range(0, len(payload), 1 << 18):
                writer.write(view[i : i + (1 << 18)])
                await writer.drain()

        sender = asyncio.ensure_future(send())
        got = await reader.readexactly(len(payload))
        await sender
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

    assert run_coro(io_loop, main(), timeout=20)
    client, server = infos["client"], infos["server"]
    assert client["ssl_object"] == server["ssl_object"] == "SSLObject"
    assert client["cipher_is_current"] and server["cipher_is_current"]
    assert client["version"] == server["version"]
    assert client["version"].startswith("TLS")
    assert client["peercert_subject"]["commonName"] == NAME
    assert server["peercert_subject"] is None  # no client certificate
    assert client["compression"] is None
    assert client["sslcontext"] == "SSLContext"
    assert client["socket"] and client["is_transport"]
    assert client["can_write_eof"] is False


class Echo(asyncio.Protocol):
    def __init__(self, loop):
        self.transport = None
        self.events = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        if self.events[-1] != "data":
            self.events.append("data")
        self.transport.write(data)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


class Client(asyncio.Protocol):
    def __init__(self, loop):
        self.data = bytearray()
        self.events = []
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.events.append("made")

    def data_received(self, data):
        if self.events[-1] != "data":
            self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


def test_tls_echo_with_protocols(io_loop, server_ctx, client_ctx):
    async def main():
        servers = []

        def factory():
            servers.append(Echo(io_loop))
            return servers[-1]

        server = await io_loop.create_server(factory, HOST, 0, ssl=server_ctx)
        tr, client = await io_loop.create_connection(
            lambda: Client(io_loop),
            HOST,
            server.sockets[0].getsockname()[1],
            ssl=client_ctx,
            server_hostname=NAME,
        )
        msg = b"tls says hello " * 1000
        tr.write(msg)
        async with asyncio.timeout(5):
            while len(client.data) < len(msg):
                await asyncio.sleep(0.001)
        tr.close()
        await client.lost
        await servers[0].lost
        server.close()
        await server.wait_closed()
        return bytes(client.data) == msg, client.events, servers[0].events

    ok, c_events, s_events = run_coro(io_loop, main())
    assert ok
    # (Whether the client's protocol sees the server's close_notify as EOF
    # before its own shutdown completes depends on timing.)
    assert c_events in (
        ["made", "data", ("lost", None)],
        ["made", "data", "eof", ("lost", None)],
    )
    # The client's close sends close_notify: the server sees EOF.
    assert s_events == ["made", "data", "eof", ("lost", None)]


def test_tls_over_unix_socket(io_loop, server_ctx, client_ctx, tmp_path):
    path = str(tmp_path / "tls.sock")

    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_unix_server(handle, path, ssl=server_ctx)
        reader, writer = await asyncio.open_unix_connection(
            path, ssl=client_ctx, server_hostname=NAME
        )
        writer.write(b"over unix\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return line

    assert run_coro(io_loop, main()) == b"OVER UNIX\n"


def test_start_tls_upgrade(io_loop, server_ctx, client_ctx):
    seen = {}

    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.drain()
        seen["server_before"] = writer.get_extra_info("ssl_object")
        await writer.start_tls(server_ctx)
        seen["server_after"] = type(writer.get_extra_info("ssl_object")).__name__
        line = await reader.readline()
        writer.write(b"secure echo: " + line)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0)
        reader, writer = await asyncio.open_connection(HOST, server.sockets[0].getsockname()[1])
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        assert writer.get_extra_info("ssl_object") is None
        await writer.start_tls(client_ctx, server_hostname=NAME)
        info = tls_info(writer.transport)
        writer.write(b"secret\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return line, info

    line, info = run_coro(io_loop, main())
    assert line == b"secure echo: secret\n"
    assert info["ssl_object"] == "SSLObject"
    assert info["peercert_subject"]["commonName"] == NAME
    assert seen == {"server_before": None, "server_after": "SSLObject"}


def test_loop_start_tls_with_protocols(io_loop, server_ctx, client_ctx):
    async def main():
        upgraded = io_loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport

            def data_received(self, data):
                assert data == b"upgrade"
                self.transport.pause_reading()
                upgraded.set_result(self.transport)

        server = await io_loop.create_server(Server, HOST, 0)
        tr, client = await io_loop.create_connection(
            lambda: Client(io_loop), HOST, server.sockets[0].getsockname()[1]
        )
        tr.write(b"upgrade")
        plain = await upgraded
        echo = Echo(io_loop)
        ssl_server = asyncio.ensure_future(
            io_loop.start_tls(plain, echo, server_ctx, server_side=True)
        )
        ssl_client = await io_loop.start_tls(tr, client, client_ctx, server_hostname=NAME)
        ssl_server = await ssl_server
        echo.connection_made(ssl_server)
        ssl_client.write(b"ping over tls")
        async with asyncio.timeout(5):
            while bytes(client.data) != b"ping over tls":
                await asyncio.sleep(0.001)
        ssl_client.close()
        await client.lost
        await echo.lost
        server.close()
        await server.wait_closed()
        return (
            ssl_client.get_extra_info("peercert") is not None,
            type(ssl_server.get_extra_info("ssl_object")).__name__,
        )

    assert run_coro(io_loop, main()) == (True, "SSLObject")


def test_handshake_failure_untrusted_certificate(io_loop, server_ctx):
    async def main():
        made = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                made.append(transport)

        server = await io_loop.create_server(Server, HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        # A client that trusts nothing: verification fails.
        untrusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(HOST, port, ssl=untrusting, server_hostname=NAME)
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        return made

    assert run_coro(io_loop, main()) == []


def test_handshake_failure_wrong_hostname(io_loop, server_ctx, client_ctx):
    async def main():
        server = await io_loop.create_server(asyncio.Protocol, HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
            await asyncio.open_connection(HOST, port, ssl=client_ctx, server_hostname="other.test")
        server.close()
        await server.wait_closed()
        return True

    assert run_coro(io_loop, main())


def test_plain_client_against_tls_server_does_not_break_it(io_loop, server_ctx, client_ctx):
    async def handle(reader, writer):
        writer.write(b"hi\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"this is not a TLS ClientHello\r\n\r\n")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        # The server still serves TLS clients afterwards.
        r2, w2 = await asyncio.open_connection(HOST, port, ssl=client_ctx, server_hostname=NAME)
        line = await r2.readline()
        w2.close()
        await w2.wait_closed()
        server.close()
        await server.wait_closed()
        return rest, line

    rest, line = run_coro(io_loop, main())
    assert b"hi" not in rest
    assert line == b"hi\n"


def test_handshake_timeout_against_a_silent_server(io_loop, client_ctx):
    async def main():
        accepted = []

        async def silent(reader, writer):
            accepted.append(writer)
            await reader.read()  # never answers the ClientHello

        server = await asyncio.start_server(silent, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        t0 = io_loop.time()
        with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
            await asyncio.open_connection(
                HOST, port, ssl=client_ctx, server_hostname=NAME, ssl_handshake_timeout=0.1
            )
        elapsed = io_loop.time() - t0
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
        return elapsed

    assert 0.09 <= run_coro(io_loop, main()) < 5


def test_sendfile_over_tls_falls_back(io_loop, server_ctx, client_ctx, tmp_path):
    payload = os.urandom(1024 * 1024 + 7)
    path = tmp_path / "tls-payload.bin"
    path.write_bytes(payload)

    async def main(f):
        got = io_loop.create_future()

        async def handle(reader, writer):
            got.set_result(await reader.read())
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
        _reader, writer = await asyncio.open_connection(
            HOST, server.sockets[0].getsockname()[1], ssl=client_ctx, server_hostname=NAME
        )
        with pytest.raises(RuntimeError, match="native sendfile is not supported"):
            await io_loop.sendfile(writer.transport, f, fallback=False)
        sent = await io_loop.sendfile(writer.transport, f)
        writer.close()
        await writer.wait_closed()
        data = await asyncio.wait_for(got, 10)
        server.close()
        await server.wait_closed()
        return sent, data

    with open(path, "rb") as f:
        sent, data = run_coro(io_loop, main(f), timeout=15)
    assert sent == len(payload)
    assert data == payload


def test_tls_rides_the_loops_own_stream_transport(io_loop, server_ctx, client_ctx):
    """Under asyncio's TLS protocol, a connection made by create_connection
    or accepted by a TLS server uses the loop's own stream transport: on
    ferroloop the native one (asyncio's _make_ssl_transport would put it
    over asyncio's Python transport)."""
    import ferroloop

    kinds = {}

    async def handle(reader, writer):
        kinds["server"] = type(writer.transport._ssl_protocol._transport)
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client_ctx, server_hostname=NAME
        )
        kinds["client"] = type(writer.transport._ssl_protocol._transport)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run_coro(io_loop, main())
    native = isinstance(io_loop, ferroloop.Loop)
    for side, cls in kinds.items():
        assert (cls.__module__ == "ferroloop._transports") == native, (side, cls)


@pytest.mark.parametrize("how", ["ssl=", "start_tls"])
def test_tls_connections_read_through_the_loops_one_staging_buffer(
    io_loop, server_ctx, client_ctx, how
):
    """asyncio's TLS protocol keeps a 256 KiB read buffer per connection;
    ferroloop's connections share their loop's, made with ``ssl=`` or, once
    the handshake is done, upgraded with ``start_tls``. Open connections
    then cost no such buffer each (asyncio's, measured the same way, shows
    the difference is there to see), and connections reading at the same
    time through the shared buffer each get their own bytes back."""
    import tracemalloc

    import ferroloop

    conns = 8
    per_conn = 2 * asyncio.sslproto.SSLProtocol.max_size  # both ends' buffers
    upgrade = how == "start_tls"

    async def handle(reader, writer):
        if upgrade:
            assert await reader.readline() == b"STARTTLS\n"
            writer.write(b"GO\n")
            await writer.drain()
            await writer.start_tls(server_ctx)
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def connect(port):
        if not upgrade:
            return await asyncio.open_connection(HOST, port, ssl=client_ctx, server_hostname=NAME)
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        await writer.start_tls(client_ctx, server_hostname=NAME)
        return reader, writer

    async def echo(reader, writer, payload):
        async def send():
            for i in range(0, len(payload), 50_000):
                writer.write(payload[i : i + 50_000])
                await writer.drain()

        sender = asyncio.ensure_future(send())
        got = await reader.readexactly(len(payload))
        await sender
        return hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()

    async def main():
        server = await asyncio.start_server(handle, HOST, 0, ssl=None if upgrade else server_ctx)
        port = server.sockets[0].getsockname()[1]
        streams = []
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(conns):
                streams.append(await connect(port))
            # Each connection echoes once, so the server's side is up too.
            for reader, writer in streams:
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        payloads = [os.urandom(300_000) for _ in streams]
        same = await asyncio.gather(*(echo(r, w, p) for (r, w), p in zip(streams, payloads)))
        for _, writer in streams:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return grown, same

    grown, same = run_coro(io_loop, main(), timeout=30)
    assert same == [True] * conns
    if isinstance(io_loop, ferroloop.Loop):
        assert grown < conns * per_conn // 4, grown
    else:
        assert grown >= conns * per_conn, grown
