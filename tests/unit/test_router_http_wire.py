"""The router's HTTP/1.1 layer (`http_wire`) against raw sockets: what clients and model servers
that are not aiohttp send and expect (pipelining, chunked bodies, `Expect: 100-continue`,
HTTP/1.0, connections closed under it)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from cdl.engines.serving.local.http_wire import BackendPool, HttpServer, Request, Response


def _error(status: int, message: str) -> Response:
    return Response(status, message.encode(), "text/plain")


async def _echo(request: Request) -> Response:
    if request.body.startswith(b"slow"):
        await asyncio.sleep(0.2)
    return Response(200, b"%s %s %s" % (request.method.encode(), request.path.encode(), request.body),
                    headers=(("X-Test", "yes"),))


async def _serve(handler=_echo, max_body: int = 1000) -> tuple[HttpServer, int]:
    server = HttpServer(handler, _error, max_body)
    port = await server.start("127.0.0.1", 0)
    return server, port


async def _exchange(port: int, data: bytes, until: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes; read until `until` has been seen as many times as asked (or the peer closes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    got = b""
    try:
        while until not in got:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                break
            got += chunk
    finally:
        writer.close()
    return got


async def test_pipelined_requests_are_answered_in_order_on_one_connection() -> None:
    server, port = await _serve()
    try:
        first = b"POST /a?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nslow"
        second = b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nfast"
        got = await _exchange(port, first + second, b"POST /b fast")
        assert got.index(b"POST /a slow") < got.index(b"POST /b fast")  # the slow one first, as sent
        assert got.count(b"HTTP/1.1 200 OK") == 2 and b"X-Test: yes" in got
        assert b"Connection: close" not in got  # kept alive
    finally:
        await server.close()


async def test_chunked_bodies_and_expect_continue() -> None:
    server, port = await _serve()
    try:
        chunked = (b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        assert b"POST /p hello world" in await _exchange(port, chunked, b"hello world")

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")  # curl waits for this before sending the body
        writer.write(b"abc")
        answer = await asyncio.wait_for(reader.readuntil(b"POST /big abc"), 5)
        assert b"200 OK" in answer
        writer.close()
    finally:
        await server.close()


async def test_too_large_malformed_and_http10_requests() -> None:
    server, port = await _serve(max_body=10)
    try:
        declared = await _exchange(port, b"POST /p HTTP/1.1\r\nContent-Length: 11\r\n\r\n", b"larger than")
        assert declared.startswith(b"HTTP/1.1 413") and b"Connection: close" in declared
        streamed = await _exchange(port, b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n", b"larger than")
        assert streamed.startswith(b"HTTP/1.1 413")
        broken = await _exchange(port, b"NOT HTTP AT ALL\r\n\r\n", b"malformed")
        assert broken.startswith(b"HTTP/1.1 400") and b"malformed HTTP request" in broken
        old = await _exchange(port, b"POST /old HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi", b"never")
        assert b"POST /old hi" in old and b"Connection: close" in old  # answered, then closed
        head = await _exchange(port, b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")  # headers only
    finally:
        await server.close()


async def test_close_lets_requests_in_flight_finish() -> None:
    server, port = await _serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nslow")
    await asyncio.sleep(0.05)
    await server.close(grace=2.0)
    answer = await asyncio.wait_for(reader.read(65536), 5)
    assert b"POST /a slow" in answer and b"Connection: close" in answer
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# --------------------------------------------------------------------------- the client pool


class _Backend:
    """A model server written against sockets: counts connections, and answers as told."""

    def __init__(self, answer: bytes, close_after: bool = False, delay: float = 0.0, drop_second: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after  # close each connection after answering, without saying so
        self.drop_second = drop_second  # close a connection on its second request, unanswered (an idle timeout racing it)
        self.delay = delay
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                served += 1
                if self.drop_second and served == 2:
                    break
                await asyncio.sleep(self.delay)
                writer.write(self.answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/predict"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_pool_keeps_one_connection_alive_for_sequential_requests() -> None:
    backend = _Backend(OK)
    url = await backend.start()
    pool = BackendPool()
    try:
        for _ in range(5):
            assert await pool.post(url, b'{"x": 1}') == (200, b"ok")
        assert backend.connections == 1
    finally:
        pool.close()
        await backend.stop()


async def test_pool_recovers_from_connections_the_server_closed() -> None:
    closing = _Backend(OK, close_after=True)
    racing = _Backend(OK, drop_second=True)
    urls = [await closing.start(), await racing.start()]
    pool = BackendPool()
    try:
        for _ in range(3):  # each kept connection is dead by the next request: a new one is opened
            assert await pool.post(urls[0], b"{}") == (200, b"ok")
            await asyncio.sleep(0.05)
        assert closing.connections == 3
        for _ in range(3):  # closed unanswered as the request arrived: sent once more on a fresh connection
            assert await pool.post(urls[1], b"{}") == (200, b"ok")
        assert racing.connections == 3
    finally:
        pool.close()
        await closing.stop()
        await racing.stop()


async def test_pool_reads_chunked_and_unsized_answers() -> None:
    chunked = _Backend(b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nbad\r\n4\r\n bit\r\n0\r\n\r\n")
    unsized = _Backend(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil close", close_after=True)
    urls = [await chunked.start(), await unsized.start()]
    pool = BackendPool()
    try:
        assert await pool.post(urls[0], b"{}") == (400, b"bad bit")
        assert await pool.post(urls[1], b"{}") == (200, b"until close")
    finally:
        pool.close()
        await chunked.stop()
        await unsized.stop()


async def test_pool_times_out_and_reports_unreachable_servers() -> None:
    slow = _Backend(OK, delay=2.0)
    url = await slow.start()
    pool = BackendPool(timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await pool.post(url, b"{}")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}/predict"
        with pytest.raises(OSError):
            await pool.post(dead, b"{}")
        garbage = _Backend(b"SPEAKS NO HTTP\r\n\r\n")
        with pytest.raises(OSError, match="unparseable"):
            await pool.post(await garbage.start(), b"{}")
        await garbage.stop()
    finally:
        pool.close()
        await slow.stop()
