"""Client connections: the bytes between the socket and aiohttp's request handler.

Every connection's protocol is a :class:`Connection` wrapped around aiohttp's own
(``web.Server``'s ``RequestHandler``, with aiohttp's C parser, llhttp). It sees every byte
before aiohttp does and frames requests itself, as far as it needs to:

- **Raw UTF-8 in request targets.** Kazoo puts caller names in the query unescaped
  (``caller_id_name=José``; specs/kazoo.md §8.1), which llhttp refuses. The request target's
  bytes >= 0x80 are percent-encoded before aiohttp parses the head (``Jos%C3%A9``), which
  decodes to the same query and path. A head that is not UTF-8 (no sender means it; its
  bytes could not be stored or looked up) and HTTP versions other than 1.0 and 1.1 are
  refused.
- **Refusals are JSON.** Each complete head is parsed once more, with a fresh parser of
  aiohttp's (``aiohttp.http.HttpRequestParser``, the same C parser and limits) before aiohttp
  sees it. A head it refuses never reaches aiohttp: in its place aiohttp gets a request for
  :data:`REFUSAL_PATH`, which recsink answers with the refusal as JSON (and closes the
  connection). The refusal goes through aiohttp and the application in order, so it never
  overtakes the answer to an earlier request on the same connection.
- **Body framing.** Content-Length bodies are counted; chunked bodies are checked chunk by
  chunk, and a chunk aiohttp would refuse fails the request's body
  (:class:`~recsink.errors.Malformed` ``bad_request``) instead of reaching aiohttp. So the
  connection knows where each head begins.
- **Head deadline.** A new connection must deliver its first head within ``header_timeout``
  seconds; a later head on a keep-alive connection within as long from its first byte.
  While aiohttp has stopped reading (requests queued behind a slow handler), the head waits.
- **Connection cap** (:class:`ConnectionCap`).
- **Bodies off the event loop.** :meth:`Connection.detach` hands the rest of a request's
  body to the caller as a socket (:mod:`recsink.bodies`' ``SocketBody``); the connection
  ends with that request.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from enum import Enum, auto
from http import HTTPStatus
from typing import Any, cast

from aiohttp import StreamReader, web
from aiohttp.http import HttpRequestParser
from aiohttp.http_exceptions import HttpProcessingError

from recsink import logs
from recsink.errors import HeadTooLarge, Malformed, RecsinkError
from recsink.metrics import Metrics

#: Seconds between two log lines about connections refused at the cap.
FLOOD_LOG_INTERVAL = 10.0
#: Longest ``detail`` of a refused request head (it quotes the offending bytes).
DETAIL_MAX = 200
#: The route a refused head is replaced with: ``{REFUSAL_PATH}/{token}``.
REFUSAL_PATH = "/.recsink/refused"
#: A head longer than this is refused before it is parsed (aiohttp's own limits are smaller:
#: 8190-byte lines and fields, 128 headers).
HEAD_MAX = 256 * 1024
#: A chunk-size line (with its extensions) longer than this is refused.
CHUNK_LINE_MAX = 4096

_HEAD_END = b"\r\n\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_HIGH_BYTE = re.compile(rb"[\x80-\xff]")
_VERSION = re.compile(rb" HTTP/(\d+)\.(\d+)$")
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: A chunk-size line as llhttp takes it: hex digits and extensions, no whitespace (stricter
#: than RFC 9112 §7.1.1 allows, never looser than llhttp).
_CHUNK_SIZE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:;" + _TOKEN + rb"(?:=(?:" + _TOKEN + rb'|"[^"\r\n]*"))?)*)')
_TRAILER = re.compile(_TOKEN + rb":[\t\x20-\x7e\x80-\xff]*")


#: Bytes a connection reads at a time until recsink takes up its request: a head, and the
#: start of a body that may soon be handed to a thread.
HEAD_READ = 16 * 1024


class ReadSizes:
    """How much a connection reads from its socket at a time once its request is taken up:
    its share of ``budget`` bytes among the connections open, between :data:`HEAD_READ` and
    ``largest`` (larger reads cost less work per byte; together they stay within the
    budget). ``buffer`` is the read buffer the connections of a listener share."""

    def __init__(self, budget: int, largest: int) -> None:
        self.budget = budget
        self.largest = max(largest, HEAD_READ)
        self.buffer = memoryview(bytearray(self.largest))

    def share(self, connections: int) -> int:
        return max(HEAD_READ, min(self.largest, self.budget // max(1, connections)))


class ConnectionCap:
    """``server.max_connections``: client connections open at once, on every listener
    together. A connection beyond it is closed as soon as it is accepted, before a byte is
    read or anything is built for it; it is counted in ``recsink_connections_refused_total``
    and logged as ``connection.refused`` once per :data:`FLOOD_LOG_INTERVAL` seconds at
    most (with how many were held back since the last line)."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.open = 0
        self._metrics = metrics
        self._throttle = logs.Throttle(FLOOD_LOG_INTERVAL)

    @property
    def full(self) -> bool:
        return self.open >= self.limit

    def admit(self) -> bool:
        """Take a place for a new connection; False when all are taken."""
        if self.full:
            return False
        self.open += 1
        self._metrics.connections_open.set(self.open)
        return True

    def release(self) -> None:
        self.open -= 1
        self._metrics.connections_open.set(self.open)

    def refuse(self, transport: asyncio.BaseTransport) -> None:
        """Close a connection that found no place (an RST when it already sent bytes)."""
        self._metrics.connections_refused.inc()
        if (held := self._throttle.allow()) is not None:
            logs.get_logger().warning(
                "connection.refused", peer=str(transport.get_extra_info("peername")),
                open=self.open, max_connections=self.limit, suppressed=held)
        if isinstance(transport, asyncio.Transport):
            transport.abort()  # nothing to flush: close the socket now
        else:
            transport.close()


class Refused(asyncio.Protocol):
    """The protocol of a connection accepted beyond the cap: closed at once."""

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap = cap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._cap.refuse(transport)


@dataclass
class Registry:
    """The open connections by transport, and the refusals waiting for their request
    (token → error); one per application, in ``state.SERVING``."""

    connections: dict[asyncio.BaseTransport, Connection] = field(default_factory=dict)
    refusals: dict[str, RecsinkError] = field(default_factory=dict)

    def of(self, request: web.BaseRequest) -> Connection | None:
        """The connection ``request`` came on; None when it did not come through a
        :class:`Connection` (the aiohttp test client's server)."""
        transport = request.transport
        return self.connections.get(transport) if transport is not None else None


class _State(Enum):
    HEAD = auto()  # reading a request head
    LENGTH = auto()  # a Content-Length body: ``_left`` bytes to go
    CHUNK_LINE = auto()  # a chunk-size line
    CHUNK_DATA = auto()  # ``_left`` bytes of chunk data
    CHUNK_END = auto()  # the CRLF after chunk data
    TRAILER = auto()  # trailer lines, up to the empty line
    PASS = auto()  # everything goes to aiohttp unread (an upgrade)
    DROP = auto()  # nothing more goes to aiohttp (refused, broken or detached)


@dataclass
class _Head:
    """One head forwarded to aiohttp: its position on the connection and, once recsink
    handles it, its request's body stream."""

    number: int
    content: StreamReader | None = None
    error: RecsinkError | None = None


class Connection(asyncio.BufferedProtocol):
    """One client connection: the cap, the head deadline, raw UTF-8 targets, refusals as
    JSON and body framing (module docstring), in front of aiohttp's ``RequestHandler``.

    The socket is read into ``reads``' buffer, which every connection of a listener shares
    (asyncio calls :meth:`get_buffer`, ``recv_into`` and :meth:`buffer_updated` in one go,
    and the bytes are copied out at once), :data:`HEAD_READ` bytes at a time until recsink
    takes up the request (a raw upload's body is then handed to its thread, before aiohttp
    buffers much of it), then its share of ``server.read_buffer_bytes``
    (:class:`ReadSizes`)."""

    def __init__(self, inner: web.RequestHandler, registry: Registry, cap: ConnectionCap,
                 header_timeout: float, limits: dict[str, int], reads: ReadSizes) -> None:
        self._inner = inner
        self._reads = reads
        self._read = reads.buffer[:HEAD_READ]
        self._registry = registry
        self._cap = cap
        self._timeout = header_timeout
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._admitted = False
        self._timer: asyncio.TimerHandle | None = None
        self._state = _State.HEAD
        self._buffer = bytearray()  # a head, chunk-size line or trailer being read
        self._left = 0
        self._heads = 0  # heads forwarded to aiohttp
        self._handled = 0  # requests recsink's middleware has seen
        self._current: _Head | None = None  # the head whose body is being framed
        self._attached: _Head | None = None  # the request being handled
        self._head_at: int | None = None  # where the current head is in what _frame forwards
        #: True once the connection must end with the request being handled.
        self.ending = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._cap.admit():
            self._cap.refuse(transport)
            return
        self._admitted = True
        # A stream transport (uvloop's does not subclass asyncio.Transport).
        self._transport = cast(asyncio.Transport, transport)
        self._registry.connections[self._transport] = self
        self._start_timer()
        self._inner.connection_made(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._read[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self._state is _State.LENGTH and len(data) <= self._left:  # the hot path
            self._left -= len(data)
            if not self._left:
                self._state = _State.HEAD
            self._inner.data_received(data)
            return
        if self._state is _State.PASS:
            self._inner.data_received(data)
            return
        out = self._frame(data)
        if out:
            self._inner.data_received(out)

    def eof_received(self) -> bool | None:
        if self._admitted:
            self._inner.eof_received()
        return None  # let the transport close its writing side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._stop_timer()
        if self._transport is not None:
            self._registry.connections.pop(self._transport, None)
            self._transport = None
        self._cap.release()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- what recsink's middleware and body readers call -----------------------------------

    def attach(self, request: web.BaseRequest) -> None:
        """Called by the middleware as each request starts: its body stream, to fail when
        its framing turns out broken."""
        self._handled += 1
        head = self._current if self._current and self._current.number == self._handled \
            else _Head(self._handled)
        head.content = request.content
        self._attached = head
        self._read = self._reads.buffer[:self._reads.share(self._cap.open)]
        if head.error is not None:
            request.content.set_exception(head.error)

    def detach(self, request: web.BaseRequest, minimum: int
               ) -> tuple[bytes, socket.socket, int] | None:
        """Hand the rest of ``request``'s Content-Length body to the caller, to read in a
        worker thread: the bytes aiohttp had read already (not yet taken from
        ``request.content``), a duplicate of the connection's socket, and how many body bytes
        are still to be read from it. Nothing more reaches aiohttp: the caller must read
        them, then end ``request.content`` (``feed_eof``); the connection ends with this
        request (its answer says ``Connection: close``). None, and nothing changes, when the
        body cannot be handed over: fewer than ``minimum`` bytes still to come, not a plain
        TCP socket, not Content-Length framed, or a later request already began."""
        transport = self._transport
        if (transport is None or self._state is not _State.LENGTH or self._left < minimum
                or self._attached is None or self._attached.number != self._heads
                or transport.get_extra_info("sslcontext") is not None):
            return None
        raw = transport.get_extra_info("socket")
        if raw is None or raw.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        # Everything the transport read is in aiohttp's stream now. Take it (which may let
        # aiohttp resume reading), then stop reading: the socket holds the rest.
        taken = request.content.read_nowait(-1)
        transport.pause_reading()
        self._state = _State.DROP
        self._stop_timer()
        self.ending = True
        # A socket object of its own on a duplicate descriptor (uvloop's transports give no
        # socket object that can do I/O): closing it leaves the connection open.
        return taken, socket.socket(fileno=os.dup(raw.fileno())), self._left

    # -- framing ---------------------------------------------------------------------------

    def _frame(self, data: bytes) -> bytes:
        """The bytes of ``data`` aiohttp gets (heads rewritten), advancing the state."""
        out: list[bytes] = []
        self._head_at = None
        pos, end = 0, len(data)
        while pos < end:
            state = self._state
            if state is _State.HEAD:
                pos = self._read_head(data, pos, out)
            elif state is _State.LENGTH or state is _State.CHUNK_DATA:  # counted bytes
                n = min(self._left, end - pos)
                out.append(data[pos:pos + n])
                self._left -= n
                pos += n
                if not self._left:
                    self._state = _State.HEAD if state is _State.LENGTH else _State.CHUNK_END
            elif state in (_State.CHUNK_LINE, _State.CHUNK_END, _State.TRAILER):
                pos = self._read_chunk_line(data, pos, out)
            elif state is _State.PASS:
                out.append(data[pos:])
                pos = end
            else:  # DROP
                pos = end
        return b"".join(out)

    def _read_head(self, data: bytes, pos: int, out: list[bytes]) -> int:
        buffer = self._buffer
        if not buffer:
            while data.startswith(b"\r\n", pos):  # empty lines before a request line
                pos += 2
            if pos >= len(data):
                return pos
            if self._timer is None:
                self._start_timer()  # the first byte of a later head
        searched = max(0, len(buffer) - 3)
        buffer += data[pos:]
        found = buffer.find(_HEAD_END, searched)
        if _BARE_LF.search(buffer, searched) is not None and (
                found < 0 or _BARE_LF.search(buffer, searched, found) is not None):
            self._refuse(Malformed("bad_request", "malformed request: a line of the request "
                                   "head ends without CR"), out)
            return len(data)
        if found < 0:
            if len(buffer) > HEAD_MAX:
                self._refuse(HeadTooLarge("bad_request", "malformed request: the request "
                                          f"head is over {HEAD_MAX} bytes"), out)
            return len(data)
        head_len = found + len(_HEAD_END)
        consumed = len(data) - (len(buffer) - head_len)
        head = bytes(buffer[:head_len])
        buffer.clear()
        self._stop_timer()
        self._head(head, out)
        return consumed

    def _head(self, head: bytes, out: list[bytes]) -> None:
        """A complete head: refuse it, or forward it (rewritten) and frame its body."""
        line_end = head.find(b"\r\n")
        line = head[:line_end]
        if not head.isascii():
            try:
                head.decode("utf-8")
            except UnicodeDecodeError as exc:
                near = head[max(0, exc.start - 16):exc.end + 16]
                self._refuse(Malformed(
                    "bad_request", "malformed request: the request head is not valid UTF-8 "
                    f"(byte {exc.start}, in {near!r})"), out)
                return
            first, last = line.find(b" "), line.rfind(b" ")
            if 0 < first < last:
                target = _HIGH_BYTE.sub(lambda m: b"%%%02X" % m[0][0], line[first + 1:last])
                line = line[:first + 1] + target + line[last:]
                head = line + head[line_end:]
        version = _VERSION.search(line)
        if version is not None and version.group(1, 2) not in ((b"1", b"0"), (b"1", b"1")):
            major, minor = (v.decode() for v in version.group(1, 2))
            self._refuse(Malformed("bad_request", f"malformed request: HTTP/{major}.{minor} "
                                   "is not supported; use HTTP/1.1"), out)
            return
        try:
            message = self._parse(head)
        except HttpProcessingError as exc:
            status = exc.code if 400 <= exc.code < 500 else 400
            kind = HeadTooLarge if status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE \
                else Malformed
            detail = (exc.message or HTTPStatus(status).phrase)[:DETAIL_MAX]
            self._refuse(kind("bad_request", f"malformed request: {detail}"), out)
            return
        except ValueError as exc:  # a target yarl cannot take
            self._refuse(Malformed("bad_request", f"malformed request: {exc}"[:DETAIL_MAX]), out)
            return
        self._heads += 1
        self._current = _Head(self._heads)
        self._head_at = len(out)
        out.append(head)
        if message is None:
            return
        if message.upgrade or message.method == "CONNECT":
            self._state = _State.PASS
        elif message.chunked:
            self._state = _State.CHUNK_LINE
        else:
            length = message.headers.get("Content-Length")
            self._left = int(length) if length else 0
            if self._left:
                self._state = _State.LENGTH

    def _parse(self, head: bytes) -> Any:
        """``head`` parsed by a parser of aiohttp's like the one aiohttp will use (None when
        it makes no message). Raises ``HttpProcessingError`` as aiohttp's would."""
        parser = HttpRequestParser(
            self._inner, asyncio.get_running_loop(), 2 ** 16,
            max_line_size=self._limits["max_line_size"],
            max_field_size=self._limits["max_field_size"],
            max_headers=self._limits["max_headers"],
            payload_exception=web.RequestPayloadError, auto_decompress=False)
        messages, _, _ = parser.feed_data(head)
        return messages[0][0] if messages else None

    def _read_chunk_line(self, data: bytes, pos: int, out: list[bytes]) -> int:
        """A chunk-size line, the CRLF after chunk data, or a trailer line: held until its
        line feed, then checked and forwarded whole."""
        buffer = self._buffer
        start = len(buffer)
        buffer += data[pos:]
        found = buffer.find(b"\n", start)
        if found < 0:
            if len(buffer) > CHUNK_LINE_MAX:
                self._broken("a chunk-size line or trailer is too long", out)
            return len(data)
        if found == 0 or buffer[found - 1] != 0x0D:
            self._broken("a line ends without CR", out)
            return len(data)
        line = bytes(buffer[:found - 1])
        taken = found + 1 - start  # bytes of ``data`` up to the line's end
        whole = bytes(buffer[:found + 1])
        buffer.clear()
        state = self._state
        if state is _State.CHUNK_END:
            if line:
                self._broken("chunk data is longer than its size", out)
                return len(data)
            self._state = _State.CHUNK_LINE
        elif state is _State.CHUNK_LINE:
            size = _CHUNK_SIZE.fullmatch(line)
            if size is None:
                self._broken(f"bad chunk-size line {line[:40]!r}", out)
                return len(data)
            self._left = int(size.group(1), 16)
            self._state = _State.CHUNK_DATA if self._left else _State.TRAILER
        elif line:  # a trailer field
            if _TRAILER.fullmatch(line) is None:
                self._broken(f"bad trailer line {line[:40]!r}", out)
                return len(data)
        else:
            self._state = _State.HEAD
        out.append(whole)
        return pos + taken

    def _broken(self, detail: str, out: list[bytes]) -> None:
        """The body being framed breaks chunked framing (RFC 9112 §7.1): nothing more
        reaches aiohttp, its request's body fails (400 ``bad_request``) and the connection
        ends with that request. When its head has not reached aiohttp yet (it came in the
        same read), the request is refused whole instead, as aiohttp's parser would."""
        error = Malformed("bad_request", f"malformed request: chunked body: {detail}")
        if self._head_at is not None:
            del out[self._head_at:]
            self._heads -= 1
            self._refuse(error, out)
            return
        self._state = _State.DROP
        self._buffer.clear()
        self.ending = True
        head = self._current
        if head is None:
            return
        head.error = error
        if head.content is not None:
            head.content.set_exception(error)

    def _refuse(self, error: RecsinkError, out: list[bytes]) -> None:
        """Answer a refused head through aiohttp, after what came before it: aiohttp gets a
        request for the refusal route in its place, and nothing after it."""
        token = secrets.token_hex(8)
        self._registry.refusals[token] = error
        self._heads += 1
        self._current = None
        self._state = _State.DROP
        self._buffer.clear()
        self._stop_timer()
        out.append(f"GET {REFUSAL_PATH}/{token} HTTP/1.1\r\nHost: recsink\r\n"
                   "Connection: close\r\n\r\n".encode())

    # -- head deadline ---------------------------------------------------------------------

    def _start_timer(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or self._state is not _State.HEAD:
            return
        if not transport.is_reading():
            # aiohttp stopped reading: requests before this head wait for their handler,
            # the client is not the slow one. Give the head its time once they are handled.
            self._start_timer()
            return
        logs.get_logger().info("connection.header_timeout",
                               peer=str(transport.get_extra_info("peername")))
        transport.close()

