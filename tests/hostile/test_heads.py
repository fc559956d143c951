"""Hostile request heads and framing against a real ``recsink serve``, on every route:
malformed request lines, malformed headers, raw and broken UTF-8 in targets, Content-Length
and chunked framing. Properties: tests/hostile/support.py."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.hostile import strategies as hs
from tests.hostile.support import BEARER, Hostile, head, request, scaled, unique

#: Headers that let a request through authentication on every route that has it.
AUTH = [("host", "rec.example.com"), ("authorization", f"Bearer {BEARER}")]


@given(family=hs.FAMILIES, method=st.one_of(hs.METHODS, hs.BAD_METHODS),
       version=hs.VERSIONS, odd=st.one_of(st.none(), hs.ODD_TARGETS),
       data=st.data())
def test_malformed_request_lines(hostile: Hostile, family: str, method: str, version: bytes,
                                 odd: bytes | None, data: st.DataObject) -> None:
    """Request lines with bad methods, versions and targets, on every route, are answered
    with a JSON error (or served), never a 500 or a plain-text error."""
    target = odd if odd is not None else hs.route_target(family, unique()).encode()
    if data.draw(st.booleans()):
        target = data.draw(hs.spliced(target.decode("latin-1"))).replace(b"\r", b"")
    raw = head("GET", b"", AUTH).split(b"\r\n", 1)[1]  # the header lines only
    line = method.encode() + b" " + target + (b" " + version if version else b"")
    hostile.exchange(line + b"\r\n" + raw)


@given(family=hs.FAMILIES, method=st.sampled_from(["GET", "PUT", "POST", "HEAD"]),
       extra=st.lists(st.one_of(
           st.tuples(hs.HEADER_NAMES, hs.HEADER_VALUES).map(
               lambda nv: nv[0].encode() + b": " + nv[1].encode()),
           hs.BROKEN_HEADER_LINES), min_size=1, max_size=6),
       ending=hs.LINE_ENDINGS, body=st.sampled_from([b"", hs.WAV, b'{"event":"notify"}']),
       with_auth=st.booleans())
def test_malformed_headers(hostile: Hostile, family: str, method: str, extra: list[bytes],
                           ending: bytes, body: bytes, with_auth: bool) -> None:
    """Headers without a colon, folded, with NUL/CTL or non-UTF-8 bytes, overlong,
    duplicated, or with odd Expect/Connection/Range/encoding values are answered with JSON
    errors, never a 500 or plain text; nothing partial is stored."""
    target = hs.route_target(family, unique())
    lines = [b"%s %s HTTP/1.1" % (method.encode(), target.encode())]
    lines += [b"%s: %s" % (k.encode(), v.encode()) for k, v in (AUTH if with_auth else AUTH[:1])]
    lines += extra
    if body and method in ("PUT", "POST") and not any(
            line.lower().startswith((b"content-length", b"transfer-encoding"))
            for line in extra):
        lines.append(b"content-length: %d" % len(body))
    else:
        body = b""
    # Lines end in ``ending``; the head always ends in a CRLF CRLF (no server.header_timeout
    # to wait for), which a parser that honours only CRLF takes for the end of one odd line.
    end = b"\r\n\r\n" if ending == b"\r\n" else ending + b"\r\n\r\n"
    hostile.exchange(ending.join(lines) + end + body)


#: Routes with the method that reads a body there (and two that do not), with that
#: route's usual content type and body.
BODY_ROUTES = st.sampled_from([
    ("kazoo_a", "PUT", "audio/wav", hs.WAV), ("kazoo_b", "POST", "audio/mpeg", hs.MP3),
    ("kazoo_c", "PUT", "audio/wav", hs.WAV), ("sinch", "POST", "application/json",
                                               b'{"event":"notify","callid":"x"}'),
    ("laml", "POST", "application/x-www-form-urlencoded", b"RecordingSid=x&a=b"),
    ("api_list", "GET", "text/plain", b"x"), ("unknown", "POST", "text/plain", b"x"),
])


def _framed(route: tuple[str, str, str, bytes], extra: list[tuple[str, str]],
            body: bytes) -> bytes:
    family, method, content_type, _ = route
    headers = [*AUTH, ("content-type", content_type), *extra]
    return head(method, hs.route_target(family, unique()), headers) + body


@given(route=BODY_ROUTES, length=hs.LENGTHS, empty=st.booleans(),
       expect=st.sampled_from([None, None, "100-continue", "bogus"]))
@scaled(0.5)
def test_content_length_framing(hostile: Hostile, route: tuple[str, str, str, bytes],
                                length: str, empty: bool, expect: str | None) -> None:
    """Content-Length too small, too large, huge, over the cap, negative, non-numeric or
    duplicated: every answer (including to the bytes left over after a short
    Content-Length) is JSON or a success, and no partial recording is kept."""
    body = b"" if empty else route[3]
    headers, leftover = hs.length_headers(length, body)
    if expect:
        headers.append(("expect", expect))
    hostile.exchange(_framed(route, headers, body + leftover), answers=2 if leftover else 1)


@given(route=BODY_ROUTES, chunking=hs.CHUNKINGS, transfer_encoding=hs.TRANSFER_ENCODINGS,
       expect=st.sampled_from([None, None, "100-continue"]))
@scaled(0.5)
def test_chunked_framing(hostile: Hostile, route: tuple[str, str, str, bytes], chunking: str,
                         transfer_encoding: str, expect: str | None) -> None:
    """Chunked bodies with valid and broken chunk sizes, extensions, trailers or no
    terminator, under odd Transfer-Encoding values: answered with JSON errors or a success,
    and no partial recording is kept."""
    headers = [("transfer-encoding", transfer_encoding)]
    if expect:
        headers.append(("expect", expect))
    hostile.exchange(_framed(route, headers, hs.chunked(route[3], chunking)))


@given(family=hs.FAMILIES, method=st.sampled_from(["GET", "HEAD", "PUT", "POST"]),
       data=st.data())
def test_targets_with_raw_and_broken_utf8(hostile: Hostile, family: str, method: str,
                                          data: st.DataObject) -> None:
    """Raw UTF-8, invalid UTF-8 bytes and bad percent-escapes in the path or the query of
    every route are answered with JSON errors (400 for what cannot be decoded), never a
    500; an upload with a decodable target is stored inside the root."""
    target = data.draw(hs.spliced(hs.route_target(family, unique())))
    target = target.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"")
    body = hs.WAV if method in ("PUT", "POST") else b""
    hostile.exchange(request(method, target, body, headers=AUTH, content_type="audio/wav"))


@given(prefix=st.sampled_from([b"", b"GET /healthz HTTP/1.1\r\nhost: x\r\n",
                               b"PUT /kazoo/call_recording_x.wav HTTP/1.1\r\n",
                               b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                               b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]),
       junk=st.binary(max_size=64).filter(lambda b: b"\r\n\r\n" not in b))
@scaled(0.05)
def test_incomplete_heads_are_dropped_quietly(hostile: Hostile, prefix: bytes,
                                              junk: bytes) -> None:
    """A connection that never completes a request head (TLS, HTTP/2 preface, half a head,
    junk) is closed after server.header_timeout, or answered with JSON; the server keeps
    serving."""
    hostile.exchange(prefix + junk)
