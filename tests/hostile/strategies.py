"""Hypothesis strategies for hostile requests: request lines, headers, framing, targets,
names that try to leave the storage root, audio that is not quite audio, broken multipart.

Strategies produce *templates*; the tests fill in a fresh :func:`tests.hostile.support.unique`
id when they build each request, so no two examples name the same recording.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

from hypothesis import strategies as st

from tests.conftest import ACCOUNT, OWNER, TESTBODY, make_wav
from tests.hostile.support import (
    BASIC,
    BEARER,
    LAML_PATH,
    MAX_BYTES,
    ROOT_DEPTH,
    SINCH_PATH,
    URL_TOKEN,
)

WAV = make_wav(0.05)
MP3 = TESTBODY

# -- request lines -----------------------------------------------------------------------

METHODS = st.one_of(
    st.sampled_from(["GET", "PUT", "POST", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE",
                     "CONNECT", "PROPFIND", "get", "Put"]),
    st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", fullmatch=True),
)
BAD_METHODS = st.one_of(
    st.sampled_from(["", "G(T", "GET\x00", "GE T", "PUT\t", "\x16\x03\x01", "GET\xff",
                     "\uff27", "P" * 10000, "@", "[PUT]", "{}"]),
    st.text(st.characters(codec="latin-1", exclude_characters=" \r\n"),
            min_size=1, max_size=12),
)
VERSIONS = st.sampled_from([
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/2", b"HTTP/3.0", b"HTTP/9.9",
    b"http/1.1", b"HTTP/1.1x", b"HTTP/ 1.1", b"", b"HTTP/1.01", b"HTTP/1.1 extra",
    b"HTTP/11", b"HTTP/1", b"HTTPS/1.1", b"HTTP/\xff.1", b"HTTP/1.1\x00",
])


def route_target(family: str, uid: str) -> str:
    """A well-formed target of each route family, naming recording ``uid``."""
    return {
        "kazoo_a": f"/kazoo/call_recording_{uid}.wav?call_id={uid}&recording_id=r-{uid}"
                   f"&token={URL_TOKEN}",
        "kazoo_b": f"/kazoo/{URL_TOKEN}/{ACCOUNT}/{OWNER}/r-{uid}/{uid}.mp3",
        "kazoo_c": f"/kazoo/{URL_TOKEN}/{uid}.wav",
        "kazoo_bare": "/kazoo",
        "sinch": SINCH_PATH,
        "laml": LAML_PATH,
        "api_list": f"/v1/recordings?call_id={uid}",
        "api_get": f"/v1/recordings/{uid}",
        "healthz": "/healthz",
        "readyz": "/readyz",
        "metrics": "/metrics",
        "root": "/",
        "unknown": f"/{uid}/nowhere",
    }[family]


FAMILIES = st.sampled_from(["kazoo_a", "kazoo_b", "kazoo_c", "kazoo_bare", "sinch", "laml",
                            "api_list", "api_get", "healthz", "readyz", "metrics", "root",
                            "unknown"])

#: Bytes spliced into a target: raw UTF-8, invalid UTF-8, bad or odd percent-escapes, CTLs,
#: separators and other things a request target should not hold.
TARGET_SPLICES = st.sampled_from([
    "José".encode(), "日本".encode(), "\U0001f4de".encode(), b"\xff", b"\xfe\xff", b"\xc3",
    b"\xed\xa0\x80", b"\xc0\xaf", b"\xe2\x82", b"\x80", b"%", b"%f", b"%zz", b"%ff",
    b"%c3", b"%ed%a0%80", b"%c0%af", b"%00", b"%0d%0a", b"%2F", b"%2e%2e%2f", b"..", b"../",
    b"/..", b"//", b"\\", b"?", b"??", b"#", b"#frag", b"&", b"&&=", b"=", b";", b"+", b"%20",
    b" ", b"\t", b"\x00", b"\x01", b"\x7f", b"\r", b"\n", b"\x0b", b"*", b"@", b":", b"[",
    b"]", b"{tail}", b"'", b'"', b"<", b">", b"a" * 9000, b"%41" * 100,
])


@st.composite
def spliced(draw: st.DrawFn, target: str) -> bytes:
    """``target`` with 1-3 hostile splices at random positions (path or query)."""
    out = target.encode()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(TARGET_SPLICES) + out[at:]
    return out


ODD_TARGETS = st.sampled_from([
    b"*", b"http://x/healthz", b"http://x:99999/healthz", b"https://[::1]/v1/recordings",
    b"x:80", b"//healthz", b"healthz", b"", b"/%", b"/?", b"/#", b"http://", b"ftp://x/",
    b"/kazoo/" + b"a" * 8100,
])

# -- headers -----------------------------------------------------------------------------

LENGTHS = st.sampled_from([
    "exact", "exact", "exact", "short", "long", "huge", "over_cap", "negative", "text",
    "plus", "hex", "float", "empty", "spaces", "list_same", "list_other", "dup_same",
    "dup_other", "none",
])


def length_headers(kind: str, body: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """Content-Length header(s) of kind ``kind`` for ``body``, and the bytes after the
    declared body that the server will take as the next request ("short" declares fewer
    bytes than sent: the rest is a second, complete request head)."""
    n = len(body)
    value = {
        "exact": str(n), "short": str(max(0, n - 1)), "long": str(n + 7),
        "huge": "9" * 40, "over_cap": str(MAX_BYTES + 1), "negative": "-1", "text": "ten",
        "plus": f"+{n}", "hex": hex(n), "float": f"{n}.0", "empty": "",
        "spaces": f" {n} ", "list_same": f"{n}, {n}", "list_other": f"{n}, {n + 1}",
    }.get(kind)
    if kind == "short" and n:
        return [("content-length", str(n - 1))], b"\r\n\r\n"
    if value is not None:
        return [("content-length", value)], b""
    if kind in ("dup_same", "dup_other"):
        other = n if kind == "dup_same" else n + 1
        return [("content-length", str(n)), ("content-length", str(other))], b""
    return [], b""


def chunked(body: bytes, kind: str) -> bytes:
    """``body`` in chunked transfer coding, well-formed or broken in one way."""
    half = len(body) // 2
    chunks = [body[:half], body[half:]] if half else [body]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return {
        "valid": framed + b"0\r\n\r\n",
        "trailers": framed + b"0\r\nx-trailer: yes\r\nx-other: 1\r\n\r\n",
        "bad_trailer": framed + b"0\r\nno colon here\r\n\r\n",
        "extensions": b"".join(b"%x;name=value\r\n%s\r\n" % (len(c), c) for c in chunks if c)
                      + b"0\r\n\r\n",
        "uppercase": framed.replace(b"a\r\n", b"A\r\n") + b"0\r\n\r\n",
        "bad_size": b"zz\r\n" + body + b"\r\n0\r\n\r\n",
        "negative_size": b"-5\r\n" + body + b"\r\n0\r\n\r\n",
        "huge_size": b"ffffffffffffffffffff\r\n" + body + b"\r\n0\r\n\r\n",
        "size_too_small": b"%x\r\n%s\r\n0\r\n\r\n" % (max(0, len(body) - 3), body),
        "missing_crlf": b"%x\r\n%s0\r\n\r\n" % (len(body), body),
        "lf_only": b"%x\n%s\n0\n\n" % (len(body), body),
        "no_terminator": framed,
        "space_in_size": b"%x \r\n%s\r\n0\r\n\r\n" % (len(body), body),
        "plus_size": b"+%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
        "0x_size": b"0x%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
    }[kind]


CHUNKINGS = st.sampled_from([
    "valid", "valid", "trailers", "bad_trailer", "extensions", "uppercase", "bad_size",
    "negative_size", "huge_size", "size_too_small", "missing_crlf", "lf_only",
    "no_terminator", "space_in_size", "plus_size", "0x_size",
])
TRANSFER_ENCODINGS = st.sampled_from([
    "chunked", "chunked", "Chunked", "gzip, chunked", "chunked, chunked", "identity",
    "gzip", "chunked;q=1", "chunked, gzip", "", "x-custom", "\tchunked",
])

HEADER_NAMES = st.sampled_from([
    "host", "content-type", "authorization", "expect", "connection", "upgrade",
    "content-encoding", "content-md5", "x-timestamp", "x-signalwire-signature",
    "x-twilio-signature", "x-request-id", "range", "if-match", "if-none-match",
    "if-modified-since", "if-range", "accept", "cookie", "te", "x-forwarded-for",
    "forwarded", "origin",
])
HEADER_VALUES = st.one_of(
    st.sampled_from([
        "", " ", "100-continue", "100-Continue", "200-ok", "close", "keep-alive",
        "upgrade", "websocket", "h2c", "gzip", "deflate", "br", "zstd", "x-unknown",
        "Basic", "Basic !!!!", "Basic " + "A" * 5000, BASIC, f"Bearer {BEARER}", "Bearer",
        "bytes=0-0", "bytes=-1", "bytes=99999999-", "bytes=5-1", "bytes=0-0,1-1,2-2",
        "bytes=abc", "items=0-1", "*", "W/\"x\"", "Thu, 01 Jan 1970 00:00:00 GMT", "garbage",
        "application/json", "multipart/form-data", "multipart/form-data; boundary=",
        "text/plain; charset=zzz", "audio/wav; charset=\"", "application/x-www-form-urlencoded",
        "2024-06-06T17:40:00Z", "9999-99-99", "application k:sig", "service :", "José",
        "\U0001f4de", "x" * 8000, "a-b-c", "1.2.3.4", "for=\"[::1]\"",
    ]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), max_size=40),
)
#: Header lines that no well-formed head holds.
BROKEN_HEADER_LINES = st.sampled_from([
    b"no colon here", b": empty name", b"host : x", b"host\t: x", b" folded: start",
    b"x-folded: a\r\n continued", b"x-folded: a\r\n\tcontinued", b"x-nul: a\x00b",
    b"x-ctl: a\x01b", b"x-del: a\x7fb", b"x-cr: a\rb", b"x-utf8: \xc3\xa9", b"x-bad: \xff\xfe",
    b"x-surrogate: \xed\xa0\x80", b"na\xffme: v", b"n(a)me: v", b"n ame: v", b"x-long: " +
    b"v" * 9000, b"x" * 9000 + b": v", b"content-length: 1\r\ncontent-length: 2",
    b"host: a\r\nhost: b", b"transfer-encoding: chunked\r\ncontent-length: 3",
    b"\xef\xbb\xbfhost: x", b"x: \x1b[31m", b"::",
])
LINE_ENDINGS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\n\r", b"\r\r\n"])

# -- names that try to leave the storage root ---------------------------------------------

CLIMBS = st.sampled_from([
    "../", "..\\", "..%2f", "..%2F", "%2e%2e%2f", "%2e%2e/", "..%5c", "%2e%2e%5c", ".%2e/",
    "....//", "..;/", "..%00/", "../\x00", "..//", "%252e%252e%252f", "..\u2215",
    "\uff0e\uff0e/",
])
NAME_TAILS = st.sampled_from([
    "pwned", ".pwned", "pwned.wav", "pwned\x00.wav", ".staging/pwned", "recsink.db", "",
    "~", ".", "..", "con", "NUL", "a/b/c", "a\\b", " ", "\t", "\U0001f4de", "José",
])


@st.composite
def escaping_names(draw: st.DrawFn, workdir: str) -> str:
    """A name that tries to name a file outside the storage root: climbing ``..``
    sequences (raw, percent-encoded, with backslashes, NULs), absolute paths into the test
    directory, or an overlong name."""
    kind = draw(st.sampled_from(["climb", "climb", "absolute", "long", "mixed", "separator"]))
    tail = draw(NAME_TAILS)
    if kind == "climb":
        return "".join(draw(st.lists(CLIMBS, min_size=1, max_size=ROOT_DEPTH))) + tail
    if kind == "absolute":
        sep = draw(st.sampled_from(["/", "\\", "%2F", "//"]))
        return sep + workdir.strip("/").replace("/", sep) + sep + (tail or "pwned")
    if kind == "long":
        return draw(st.sampled_from(["a", "é", ".", "/", "%2e", "\U0001f4de"])) * draw(
            st.integers(120, 700))
    if kind == "separator":
        return draw(st.sampled_from(["/", "\\", "%2F", "%5C", "\x00", "%00", "?", "#"])) + tail
    return "".join(draw(st.lists(st.sampled_from(["..", "/", "\\", ".", "%", "2e", "2f",
                                                  "\x00", "pwned", "~"]),
                                 min_size=1, max_size=12)))


# -- audio that is not quite audio ----------------------------------------------------------

def _syncsafe(n: int) -> bytes:
    return bytes([(n >> 21) & 0x7F, (n >> 14) & 0x7F, (n >> 7) & 0x7F, n & 0x7F])


@st.composite
def bogus_audio(draw: st.DrawFn) -> bytes:
    """Bodies that start like WAV or MP3 but are truncated or bogus."""
    kind = draw(st.sampled_from([
        "truncated_wav", "riff_size", "fmt_zeroes", "fmt_short", "no_data", "data_size",
        "id3_huge", "id3_truncated", "id3_ff", "mpeg_frames", "mpeg_random", "truncated_mp3",
        "valid_wav", "valid_mp3", "wav_then_junk", "nested_riff", "text",
    ]))
    junk = draw(st.binary(max_size=300))
    if kind == "truncated_wav":
        return WAV[:draw(st.integers(12, len(WAV) - 1))]
    if kind == "riff_size":
        size = draw(st.sampled_from([0, 1, 4, 0xFFFFFFFF, 0x7FFFFFFF, len(WAV) * 10]))
        return b"RIFF" + struct.pack("<I", size) + WAV[8:]
    if kind in ("fmt_zeroes", "fmt_short"):
        channels = draw(st.sampled_from([0, 1, 2, 0xFFFF]))
        rate = draw(st.sampled_from([0, 1, 8000, 0xFFFFFFFF]))
        bits = draw(st.sampled_from([0, 8, 16, 0xFFFF]))
        align = draw(st.sampled_from([0, 2]))
        fmt = struct.pack("<HHIIHH", draw(st.sampled_from([1, 3, 0, 0xFFFE, 85])), channels,
                          rate, (rate * max(align, 1)) & 0xFFFFFFFF, align, bits)
        if kind == "fmt_short":
            fmt = fmt[:draw(st.integers(0, 15))]
        data = WAV[44:44 + draw(st.integers(0, 400))]
        payload = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack(
            "<I", len(data)) + data
        return b"RIFF" + struct.pack("<I", len(payload)) + payload
    if kind == "no_data":
        return WAV[:36]
    if kind == "data_size":
        return WAV[:40] + struct.pack("<I", draw(st.sampled_from([0, 1, 0xFFFFFFFF]))) + WAV[44:]
    if kind == "id3_huge":
        return b"ID3\x04\x00\x00" + _syncsafe(draw(st.sampled_from(
            [0x0FFFFFFF, 0x7FFFFF, 10, 0]))) + junk
    if kind == "id3_truncated":
        return MP3[:draw(st.integers(10, 40))]
    if kind == "id3_ff":
        return b"ID3" + draw(st.binary(min_size=7, max_size=7)) + junk
    if kind in ("mpeg_frames", "mpeg_random"):
        frames = b""
        for _ in range(draw(st.integers(1, 8))):
            header = bytes([0xFF, 0xE0 | draw(st.integers(0, 31)), draw(st.integers(0, 255)),
                            draw(st.integers(0, 255))])
            frames += header + draw(st.binary(max_size=200 if kind == "mpeg_random" else 40))
        return frames
    if kind == "truncated_mp3":
        return MP3[:draw(st.integers(10, len(MP3) - 1))]
    if kind == "valid_wav":
        return WAV
    if kind == "valid_mp3":
        return MP3
    if kind == "wav_then_junk":
        return WAV + junk
    if kind == "nested_riff":
        return b"RIFF\x24\x00\x00\x00WAVERIFF\x1c\x00\x00\x00WAVEfmt " + junk
    return b"some random content: " + junk


# -- multipart -------------------------------------------------------------------------------

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                   max_size=3),
    max_leaves=8)


@st.composite
def metadata(draw: st.DrawFn, uid: str, attacked: str, name: str) -> bytes:
    """A Kazoo JSON metadata part (specs/kazoo.md §4.2) whose field ``attacked`` holds
    ``name``, with other fields of any JSON type; sometimes not JSON at all."""
    meta: dict[str, Any] = {"id": f"r-{uid}", "call_id": uid, "account_id": ACCOUNT,
                            "owner_id": OWNER, "start": 63877471200, "duration_ms": 1000}
    if attacked == "Account-ID":
        meta["custom_channel_vars"] = {"Account-ID": name}
        del meta["account_id"]
    else:
        meta[attacked] = name
    for key in draw(st.lists(st.sampled_from(
            ["start", "duration_ms", "from", "to", "interaction_id", "custom_channel_vars",
             "call_id", "owner_id", "media_type", "name"]), max_size=3)):
        meta[key] = draw(JSON_VALUES)
    text = json.dumps(meta).encode()
    broken = draw(st.sampled_from(["none"] * 6 + ["truncated", "array", "not_json",
                                                  "lone_surrogate", "latin1", "huge_number",
                                                  "deep", "infinity"]))
    if broken == "deep":
        depth = draw(st.sampled_from([100, 5000, 100_000]))
        return text[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
    if broken == "infinity":
        return text[:-1] + b', "start": Infinity, "duration_ms": -Infinity, "y": NaN}'

    if broken == "truncated":
        return text[:draw(st.integers(0, len(text) - 1))]
    if broken == "array":
        return b"[" + text + b"]"
    if broken == "not_json":
        return b"{id: " + uid.encode() + b"}"
    if broken == "lone_surrogate":
        return text.replace(b'"call_id": "', b'"call_id": "\\ud800', 1)
    if broken == "latin1":
        return text[:-1] + b', "x": "\xe9"}'
    if broken == "huge_number":
        return text[:-1] + b', "start": 1' + b"0" * 400 + b"}"
    return text


BOUNDARY = "Ab+/cD3eFg4hIj5kLm6nOp7qRs8tUv9wXy0zAB1CD2EF3GH4IJ5KL6MN7OP8QR9S"


@st.composite
def multipart(draw: st.DrawFn, meta: bytes, media: bytes) -> tuple[str, bytes, bytes]:
    """(Content-Type, body, the recording it carries) of a Kazoo multipart upload
    (kz_http_util framing, §4.2), broken in at most one way."""
    recording = media
    fault = draw(st.sampled_from([
        "none", "none", "none", "base64", "bad_base64", "no_boundary_param", "wrong_boundary",
        "overlong_boundary", "quoted_boundary", "empty_boundary", "truncated",
        "no_final_boundary", "no_part_headers", "garbage_part_headers", "part_header_no_colon",
        "nested", "json_only", "media_first", "mixed", "lf_only", "preamble", "epilogue",
        "many_parts",
    ]))
    boundary = BOUNDARY
    if fault == "overlong_boundary":
        boundary = "b" * draw(st.integers(71, 300))
    if fault == "empty_boundary":
        boundary = ""
    if fault == "base64":
        media = base64.b64encode(media)
    if fault == "bad_base64":
        media = base64.b64encode(media)[:-3] + b"!*"
    json_headers = b"content-disposition: form-data; name=meta\r\ncontent-type: application/json"
    media_headers = b"content-disposition: form-data; name=media\r\ncontent-type: audio/wav"
    if fault == "no_part_headers":
        media_headers = b""
    if fault == "garbage_part_headers":
        media_headers = draw(st.binary(max_size=200)).replace(b"\r\n\r\n", b"")
    if fault == "part_header_no_colon":
        media_headers = b"content-disposition form-data"
    if fault == "nested":
        media_headers = b"content-type: multipart/mixed; boundary=inner"
        media = recording = (b"--inner\r\ncontent-type: audio/wav\r\n\r\n" + media
                             + b"\r\n--inner--")
    dash = b"--" + boundary.encode()
    parts = [(json_headers, meta), (media_headers, media)]
    if fault == "json_only":
        parts = parts[:1]
    if fault == "media_first":
        parts = parts[::-1]
    if fault == "many_parts":
        parts = [(json_headers, meta)] * 3 + parts
    body = b"".join(b"\r\n" + dash + b"\r\n" + h + b"\r\n\r\n" + p for h, p in parts)
    body += b"\r\n" + dash + b"--"
    if fault == "lf_only":
        body = body.replace(b"\r\n", b"\n")
    if fault == "preamble":
        body = draw(st.binary(max_size=100)).replace(dash, b"") + body
    if fault == "epilogue":
        body += b"\r\n" + draw(st.binary(max_size=100))
    if fault == "truncated":
        body = body[:draw(st.integers(0, len(body) - 1))]
    if fault == "no_final_boundary":
        body = body[:-len(dash) - 4]
    declared = boundary
    if fault == "wrong_boundary":
        declared = "not-" + boundary
    if fault == "quoted_boundary":
        declared = f'"{boundary}"'
    subtype = "mixed" if fault == "mixed" else "form-data"
    content_type = f"multipart/{subtype}; boundary={declared}"
    if fault == "no_boundary_param":
        content_type = f"multipart/{subtype}"
    return content_type, body, recording


def multipart_plain(meta: bytes, media: bytes) -> tuple[str, bytes, bytes]:
    """A well-framed Kazoo multipart upload of ``meta`` and ``media``."""
    dash = b"--" + BOUNDARY.encode()
    body = (b"\r\n" + dash + b"\r\ncontent-disposition: form-data; name=meta\r\n"
            b"content-type: application/json\r\n\r\n" + meta + b"\r\n" + dash
            + b"\r\ncontent-disposition: form-data; name=media\r\ncontent-type: audio/wav"
            b"\r\n\r\n" + media + b"\r\n" + dash + b"--")
    return f"multipart/form-data; boundary={BOUNDARY}", body, media
