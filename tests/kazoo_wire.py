"""The six example requests of specs/kazoo.md §9, byte for byte, as Kazoo 4.3's Erlang httpc
(paths A and B) and the storage-settings probe send them."""

from __future__ import annotations

import base64

from tests.conftest import TESTBODY

EX1_TARGET = (
    "/recordings/call_recording_a84b4c76e66710%40pc33.atlanta.example.com.mp3"
    "?from=%2B14155550100%40acme.sip.example.com&to=1002%40acme.sip.example.com"
    "&caller_id_name=Alice%20Smith&caller_id_number=%2B14155550100"
    "&call_id=a84b4c76e66710%40pc33.atlanta.example.com"
    "&cdr_id=202403-a84b4c76e66710%40pc33.atlanta.example.com"
    "&interaction_id=63877471195-5f3a9c1e&owner_id=9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    "&account_id=3a1b2c3d4e5f60718293a4b5c6d7e8f9&start=63877471200&duration_ms=65432"
    "&recording_id=202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
)


def ex1(caller_id_name: str = "Alice%20Smith") -> bytes:
    """Path A, record_call url http://rec.example.com:8080/recordings, PUT (4.3 >= 4.3.106).
    ``caller_id_name`` goes into the request line as given (raw UTF-8 allowed, §8.1)."""
    target = EX1_TARGET.replace("caller_id_name=Alice%20Smith", f"caller_id_name={caller_id_name}")
    return (
        f"PUT {target} HTTP/1.1\r\n".encode()
        + b"content-type: audio/mpeg\r\n"
        b"content-length: 1034\r\n"
        b"te: \r\n"
        b"host: rec.example.com:8080\r\n"
        b"connection: keep-alive\r\n"
        b"\r\n" + TESTBODY
    )


EX2 = (
    b"POST /upload?token=s3cr3t&recording=call_recording_a84b4c76e66710%40pc33.atlanta.example.com.mp3"
    b"&from=%2B14155550100%40acme.sip.example.com&to=1002%40acme.sip.example.com"
    b"&caller_id_name=Alice%20Smith&caller_id_number=%2B14155550100"
    b"&call_id=a84b4c76e66710%40pc33.atlanta.example.com"
    b"&cdr_id=202403-a84b4c76e66710%40pc33.atlanta.example.com"
    b"&interaction_id=63877471195-5f3a9c1e&owner_id=9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    b"&account_id=3a1b2c3d4e5f60718293a4b5c6d7e8f9&start=63877471200&duration_ms=65432"
    b"&recording_id=202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9 HTTP/1.1\r\n"
    b"content-type: audio/mpeg\r\n"
    b"content-length: 1034\r\n"
    b"te: \r\n"
    b"host: rec.example.com\r\n"
    b"authorization: Basic a2F6b286cGE1NQ==\r\n"
    b"connection: keep-alive\r\n"
    b"\r\n" + TESTBODY
)

EX3_CALL_ID = "7d3f9a2e-2c1b-4f7e-9b8a-1e2d3c4b5a69"
EX3 = (
    b"PUT /recordings/call_recording_7d3f9a2e-2c1b-4f7e-9b8a-1e2d3c4b5a69..mp3"
    b"?from=%2B14155550100%40acme.sip.example.com&to=1002%40acme.sip.example.com"
    b"&caller_id_name=Alice%20Smith&caller_id_number=%2B14155550100"
    b"&call_id=7d3f9a2e-2c1b-4f7e-9b8a-1e2d3c4b5a69"
    b"&cdr_id=202403-7d3f9a2e-2c1b-4f7e-9b8a-1e2d3c4b5a69"
    b"&interaction_id=63877471195-5f3a9c1e&account_id=3a1b2c3d4e5f60718293a4b5c6d7e8f9 HTTP/1.1\r\n"
    b"content-type: audio/mpeg\r\n"
    b"content-length: 1034\r\n"
    b"te: \r\n"
    b"host: rec.example.com:8080\r\n"
    b"connection: keep-alive\r\n"
    b"content_type: audio/mpeg\r\n"
    b"\r\n" + TESTBODY
)

EX4_PATH = (
    "/kazoo/3a1b2c3d4e5f60718293a4b5c6d7e8f9/9f8e7d6c5b4a39281706f5e4d3c2b1a0"
    "/202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9/5d41402abc4b2a76b9719d911017c592.mp3"
)
EX4 = (
    f"PUT {EX4_PATH} HTTP/1.1\r\n".encode()
    + b"content-type: audio/mpeg\r\n"
    b"content-length: 1034\r\n"
    b"te: \r\n"
    b"host: store.example.com\r\n"
    b"connection: keep-alive\r\n"
    b"\r\n" + TESTBODY
)

BOUNDARY = b"Ab+/cD3eFg4hIj5kLm6nOp7qRs8tUv9wXy0zAB1CD2EF3GH4IJ5KL6MN7OP8QR9S"
META = (
    b'{"call_id":"a84b4c76e66710@pc33.atlanta.example.com","callee_id_name":"Bob Jones",'
    b'"callee_id_number":"1002","caller_id_name":"Alice Smith","caller_id_number":"+14155550100",'
    b'"cdr_id":"202403-a84b4c76e66710@pc33.atlanta.example.com","content_type":"audio/mpeg",'
    b'"custom_channel_vars":{"Account-ID":"3a1b2c3d4e5f60718293a4b5c6d7e8f9","Owner-ID":"9f8e7d6c5b4a39281706f5e4d3c2b1a0"},'
    b'"description":"recording 5d41402abc4b2a76b9719d911017c592.mp3","direction":"inbound","duration":65,'
    b'"duration_ms":65432,"from":"+14155550100@acme.sip.example.com","interaction_id":"63877471195-5f3a9c1e",'
    b'"media_source":"recorded","media_type":"mp3","name":"5d41402abc4b2a76b9719d911017c592.mp3",'
    b'"origin":"inbound from offnet to account","owner_id":"9f8e7d6c5b4a39281706f5e4d3c2b1a0",'
    b'"request":"1002@acme.sip.example.com","source_type":"kzc_recording","start":63877471200,'
    b'"to":"1002@acme.sip.example.com","id":"202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9"}'
)
assert len(META) == 926


def multipart_body(
    media: bytes,
    meta: bytes = META,
    doc_id: bytes = b"202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    name: bytes = b"5d41402abc4b2a76b9719d911017c592.mp3",
    content_type: bytes = b"audio/mpeg",
    boundary: bytes = BOUNDARY,
) -> bytes:
    """kz_http_util:encode_multipart/2 framing (§4.2): leading CRLF, unquoted names, no
    filename, JSON first, no trailing CRLF."""
    return (
        b"\r\n--" + boundary + b"\r\n"
        b"content-disposition: form-data; name=" + doc_id + b"\r\n"
        b"content-type: application/json\r\n\r\n" + meta
        + b"\r\n--" + boundary + b"\r\n"
        b"content-disposition: form-data; name=" + name + b"\r\n"
        b"content-type: " + content_type + b"\r\n\r\n" + media
        + b"\r\n--" + boundary + b"--"
    )


def multipart_request(body: bytes, path: str = EX4_PATH, boundary: bytes = BOUNDARY) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\n".encode()
        + b"content-type: multipart/form-data; boundary=" + boundary + b"\r\n"
        + f"content-length: {len(body)}\r\n".encode()
        + b"te: \r\n"
        b"host: store.example.com\r\n"
        b"connection: keep-alive\r\n"
        b"\r\n" + body
    )


EX5_BODY = multipart_body(TESTBODY)
assert len(EX5_BODY) == 2385
EX5 = multipart_request(EX5_BODY)
EX5_BASE64_BODY = multipart_body(base64.b64encode(TESTBODY))
assert len(EX5_BASE64_BODY) == 2731

PROBE_DOC_ID = "c81e728d9d4c2f636f067f89cc14862c"
PROBE_NAME = "c4ca4238a0b923820dcc509a6f75849b_test_credentials_file.txt"
PROBE_CONTENT = b"some random content: c4ca4238a0b923820dcc509a6f75849b"
assert len(PROBE_CONTENT) == 53
EX6_PATH = f"/kazoo/3a1b2c3d4e5f60718293a4b5c6d7e8f9/{PROBE_DOC_ID}/{PROBE_NAME}"
EX6 = (
    f"PUT {EX6_PATH} HTTP/1.1\r\n".encode()
    + b"content-type: text/plain\r\n"
    b"content-length: 53\r\n"
    b"te: \r\n"
    b"host: store.example.com\r\n"
    b"connection: keep-alive\r\n"
    b"\r\n" + PROBE_CONTENT
)


def probe_get(path: str) -> bytes:
    """The GET Kazoo sends to read a probe (or recording) back (§9 Ex 6, §5.5)."""
    return (
        f"GET {path} HTTP/1.1\r\n".encode()
        + b"content-length: 0\r\n"
        b"te: \r\n"
        b"host: store.example.com\r\n"
        b"connection: keep-alive\r\n"
        b"\r\n"
    )


#: The doubled-segment probe GET of Kazoo >= 4.3.106 (§5.5), with the metadata query.
EX6_DOUBLED_GET_PATH = (
    EX6_PATH + f"/3a1b2c3d4e5f60718293a4b5c6d7e8f9/{PROBE_DOC_ID}/{PROBE_NAME}"
    f"?att_uuid=0f1e2d3c&content=some+random+content%3A+c4ca4238a0b923820dcc509a6f75849b"
    f"&request_id=d41d8cd98f00b204&id={PROBE_DOC_ID}"
)

ALL = {"ex1": ex1(), "ex2": EX2, "ex3": EX3, "ex4": EX4, "ex5": EX5, "ex6": EX6}
