"""The hostile-input harness: raw requests over a socket to a real ``recsink serve``, and
the properties every answer and the storage root must keep after every example.

``Hostile.exchange(data)`` sends ``data`` byte for byte on a new connection, reads every
answer the server gives to it, and checks them:

1. no 500, and no 5xx but a deliberate 503/507; the process is alive and ``/healthz`` answers;
2. every 4xx/5xx is ``application/json`` with an object body holding ``error`` and
   ``detail``; a connection closed without an answer only when no complete request head
   was sent;
3. nothing in the test directory but the configuration, the log, the catalog and the storage
   root; nothing in the root but completed recordings whose bytes have the catalog's sha256;
   staging empty once the answer came.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlencode, urlsplit

from hypothesis import settings

from recsink.sources.laml import signature as laml_signature
from recsink.sources.sinch import signature as sinch_signature
from tests.conftest import RunningServer, base_config, merge, start_server_process, wait_for

#: Seconds the hostile server waits for a first request head, and for body bytes.
HEADER_TIMEOUT = 1.0
BODY_IDLE_TIMEOUT = 1.0
#: Largest recording the hostile server accepts (a "huge" Content-Length is over it).
MAX_BYTES = 1024 * 1024
#: Seconds a test waits for an answer: the server's own timeouts, plus slack for a loaded
#: machine.
ANSWER_TIMEOUT = 30.0

KAZOO_PREFIX = "/kazoo"
URL_TOKEN = "hostile-url-token"
BEARER = "hostile-bearer-token"
BASIC_USER, BASIC_PASSWORD = "kazoo", "pa55"
BASIC = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
#: Secrets with characters that percent-encode (and, Base64-encoded, give ``+``/``/``):
#: a second URL token and a second Basic user.
SPECIAL_TOKEN = "s3cr/t+?&=%x"
SPECIAL_USER, SPECIAL_PASSWORD = "pbx-two", "p4ss w/rd?&=+~"
SPECIAL_BASIC = "Basic " + base64.b64encode(
    f"{SPECIAL_USER}:{SPECIAL_PASSWORD}".encode()).decode()
SINCH_PATH = "/sinch/voice"
SINCH_KEY = "f00dcafe-abba-c0de-1dea-dabb1ed4caf3"
SINCH_SECRET = "cmVjb3JkaW5nLXNpbmstdGVzdC1zZWNyZXQ="
LAML_PATH = "/signalwire/recording-status"
LAML_KEY = "PSK_recording_sink_test_key_0123456789"
LAML_BASE = "https://sink.example.com"
#: Every value that ends up in a storage key is in the template, so every one is attacked.
KEY_TEMPLATE = "{source}/{account_id}/{owner_id}/{call_id}/{recording_id}/{id}.{ext}"
#: The storage root sits this deep in the test directory, so that a name climbing out of it
#: with up to this many ``..`` still lands where the walk of the test directory sees it.
ROOT_DEPTH = 6


def hostile_config(workdir: Path) -> dict[str, Any]:
    """The configuration of the server every hostile test module runs against."""
    root = workdir.joinpath(*[f"up{i}" for i in range(ROOT_DEPTH - 1)], "recordings")
    return merge(base_config(workdir), {
        "server": {"header_timeout": HEADER_TIMEOUT, "body_idle_timeout": BODY_IDLE_TIMEOUT},
        "storage": {"key_template": KEY_TEMPLATE, "disk": {"root": str(root), "fsync": False}},
        "ingest": {"max_bytes": MAX_BYTES},
        "auth": {"url_tokens": [URL_TOKEN, SPECIAL_TOKEN], "bearer_tokens": [BEARER],
                 "basic": [{"username": BASIC_USER, "password": BASIC_PASSWORD},
                           {"username": SPECIAL_USER, "password": SPECIAL_PASSWORD}]},
        "kazoo": {"prefixes": [KAZOO_PREFIX]},
        "sinch": {"path": SINCH_PATH,
                  "applications": [{"key": SINCH_KEY, "secret": SINCH_SECRET}]},
        "laml": {"path": LAML_PATH, "signing_key": LAML_KEY, "public_base_url": LAML_BASE},
    })


#: Every secret ``hostile_config`` configures, and each Basic ``user:password``.
SECRETS = (URL_TOKEN, SPECIAL_TOKEN, BEARER, BASIC_PASSWORD, SPECIAL_PASSWORD, SINCH_SECRET,
           LAML_KEY, f"{BASIC_USER}:{BASIC_PASSWORD}", f"{SPECIAL_USER}:{SPECIAL_PASSWORD}")


def secret_forms(secret: str) -> set[str]:
    """``secret`` as it may travel: raw, percent-encoded (``quote`` with and without ``/``
    kept, ``quote_plus``; upper- and lower-case hex) and Base64 (standard and URL-safe, with
    and without padding)."""
    forms = {secret}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret)):
        forms |= {encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m[0].lower(), encoded)}
    for b64 in (base64.b64encode, base64.urlsafe_b64encode):
        text = b64(secret.encode()).decode()
        forms |= {text, text.rstrip("=")}
    return forms


def secret_leaks(log: Path) -> list[str]:
    """Each form of a configured secret (:data:`SECRETS`, :func:`secret_forms`) found in
    ``log``: in its raw text, or in any string value of its JSON lines once decoded."""
    text = log.read_text(encoding="utf-8", errors="replace")
    values = [text]
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            values += _strings(json.loads(line))
    leaks = []
    for secret in SECRETS:
        for form in sorted(secret_forms(secret)):
            found = next((v for v in values if form in v), None)
            if found is not None:
                at = found.index(form)
                context = found[max(0, at - 200):at + 80]
                leaks.append(f"{form!r} (a form of {secret!r}) in: {context!r}")
    return leaks


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def scaled(weight: float) -> settings:
    """Settings with ``weight`` times the profile's example count (at least 5): tests whose
    examples wait for the server's timeouts run fewer of them."""
    default = settings.default
    assert default is not None
    return settings(max_examples=max(5, round(default.max_examples * weight)))


def unique() -> str:
    """A fresh id fragment: examples never share a call or recording id."""
    return uuid.uuid4().hex[:12]


# -- answers -----------------------------------------------------------------------------

@dataclass
class Answer:
    """One HTTP response as it came off the wire."""

    status: int
    status_line: bytes
    headers: list[tuple[str, str]]
    body: bytes
    #: The answer to a HEAD request: it has no body to check.
    to_head: bool = False

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[-1] if found else None

    @property
    def closes(self) -> bool:
        return (self.header("connection") or "").lower() == "close"

    def __str__(self) -> str:
        return f"{self.status_line!r} {self.headers!r} {self.body[:300]!r}"


class ClosedMidAnswer(AssertionError):
    """The server closed the connection in the middle of an answer."""


class _Reader:
    """Reads HTTP/1.x responses from a socket (the test's own minimal parser, so that any
    status line the server writes is seen as it is)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._buf = b""
        self.eof = False

    def _fill(self) -> bool:
        if self.eof:
            return False
        try:
            data = self._sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            raise AssertionError(f"no answer within {self._timeout:g} s") from None
        if not data:
            self.eof = True
            return False
        self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise ClosedMidAnswer(f"body cut short: {self._buf[:200]!r}")
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            if not self._fill():
                raise ClosedMidAnswer(f"line cut short: {self._buf[:200]!r}")
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    def answer(self, head_request: bool) -> Answer | None:
        """The next response; None when the server closed the connection before one."""
        while not self._buf:
            if not self._fill():
                return None
        while b"\r\n\r\n" not in self._buf:
            if not self._fill():
                raise ClosedMidAnswer(f"response head cut short: {self._buf[:300]!r}")
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        status_line, *lines = head.split(b"\r\n")
        parts = status_line.split(b" ", 2)
        assert len(parts) >= 2, status_line
        assert parts[0] in (b"HTTP/1.0", b"HTTP/1.1"), status_line
        status = int(parts[1])
        headers = []
        for line in lines:
            name, sep, value = line.partition(b":")
            assert sep, f"response header without a colon: {line!r}"
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        answer = Answer(status, status_line, headers, b"", to_head=head_request)
        if head_request or status < 200 or status in (204, 304):
            return answer
        if (answer.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._take(size)
                self._take(2)
            while self._line():
                pass
            answer.body = body
        elif (length := answer.header("content-length")) is not None:
            answer.body = self._take(int(length))
        else:
            while self._fill():
                pass
            answer.body, self._buf = self._buf, b""
        return answer


def converse(port: int, data: bytes, answers: int = 1,
             timeout: float = ANSWER_TIMEOUT) -> list[Answer]:
    """Send ``data`` on a new connection; read up to ``answers`` final responses (1xx are
    skipped), fewer when the server closes the connection first. An AssertionError when
    nothing more arrives for ``timeout`` seconds."""
    methods = [data.split(b" ", 1)[0]] + [b"GET"] * answers
    out: list[Answer] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer and close before reading everything: read that answer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        reader = _Reader(sock, timeout)
        while len(out) < answers:
            answer = reader.answer(head_request=methods[len(out)] == b"HEAD")
            if answer is None:
                break
            if answer.status < 200:
                continue
            out.append(answer)
            if answer.closes:
                break
    return out


# -- the properties ----------------------------------------------------------------------

def check_answer(answer: Answer) -> None:
    """Property 1 (status) and 2 (JSON error body) for one answer."""
    assert answer.status != 500, f"500: {answer}"
    assert answer.status < 500 or answer.status in (503, 507), f"unexpected 5xx: {answer}"
    if answer.status < 400:
        return
    content_type = answer.header("content-type") or ""
    assert content_type.split(";")[0].strip() == "application/json", f"not JSON: {answer}"
    if answer.to_head:
        return
    body = json.loads(answer.body)
    assert isinstance(body, dict), f"not a JSON object: {answer}"
    assert isinstance(body.get("error"), str), f"no error: {answer}"
    assert body["error"], f"empty error: {answer}"
    assert isinstance(body.get("detail"), str), f"no detail: {answer}"


@dataclass(repr=False)
class Hostile:
    """The server under attack in one test module, and the checks run after each example."""

    server: RunningServer
    #: Files of completed recordings already verified (path → sha256), to hash each once.
    verified: dict[Path, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Hostile(port={self.port}, workdir={str(self.workdir)!r})"

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def workdir(self) -> Path:
        return self.server.workdir

    @property
    def root(self) -> Path:
        return self.server.root

    @classmethod
    def start(cls, workdir: Path) -> Hostile:
        return cls(start_server_process(workdir, hostile_config(workdir)))

    def exchange(self, data: bytes, answers: int = 1,
                 timeout: float = ANSWER_TIMEOUT) -> list[Answer]:
        """Send ``data``, check every answer and the server's state (module docstring);
        return the answers."""
        try:
            got = converse(self.port, data, answers, timeout)
        finally:
            self.check_alive()
        if not got:
            assert b"\r\n\r\n" not in data, (
                "the connection closed without an answer to a complete request head")
        for answer in got:
            check_answer(answer)
        self.check_storage()
        return got

    def check_alive(self) -> None:
        assert self.server.proc.poll() is None, (
            f"recsink exited {self.server.proc.returncode}")
        [health] = converse(self.port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert health.status == 200, f"/healthz: {health}"

    def record(self, record_id: str) -> dict[str, Any] | None:
        """The API's resource of recording ``record_id`` (None when there is none)."""
        [answer] = converse(self.port, (
            f"GET /v1/recordings/{record_id} HTTP/1.1\r\nhost: x\r\n"
            f"authorization: Bearer {BEARER}\r\n\r\n").encode())
        if answer.status == 404:
            return None
        assert answer.status == 200, str(answer)
        resource: dict[str, Any] = json.loads(answer.body)
        return resource

    def check_storage(self) -> None:
        """Property 3: nothing outside the root, nothing partial or unknown inside it,
        staging empty."""
        staging = self.root / ".staging"
        wait_for(lambda: not any(staging.iterdir()), timeout=10)
        allowed_outside = {self.workdir / "recsink.toml", self.workdir / "recsink.log"}
        catalog = Path(self.server.config["catalog"]["path"])
        allowed_outside |= {catalog, *(catalog.with_name(catalog.name + s)
                                       for s in ("-wal", "-shm", "-journal"))}
        in_root = []
        for directory, dirs, files in os.walk(self.workdir):
            for name in dirs:
                path = Path(directory, name)
                assert path.is_relative_to(self.root) or self.root.is_relative_to(path), (
                    f"a directory outside the storage root: {path}")
            for name in files:
                path = Path(directory, name)
                if path.is_relative_to(self.root):
                    in_root.append(path)
                else:
                    assert path in allowed_outside, f"a file outside the storage root: {path}"
        for path in in_root:
            if path in self.verified:
                continue
            # KEY_TEMPLATE names every object after its record id: <id>.<ext>.
            record = self.record(path.name.partition(".")[0].partition("~")[0])
            assert record is not None, f"a file no recording owns: {path}"
            assert record["status"] == "completed", f"{path}: {record['status']} ({record})"
            url = record["storage_url"] or ""
            assert Path(unquote(urlsplit(url).path)) == path, f"{path}: catalog says {url}"
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            assert digest == record["sha256"], f"{path}: bytes differ from the catalog's sha256"
            self.verified[path] = digest


# -- requests ----------------------------------------------------------------------------

def head(method: str, target: str | bytes, headers: Sequence[tuple[str, str | bytes]] = (),
         version: bytes = b"HTTP/1.1") -> bytes:
    """A request head: request line, the headers as given, blank line."""
    raw_target = target.encode() if isinstance(target, str) else target
    out = method.encode() + b" " + raw_target + b" " + version + b"\r\n"
    for name, value in headers:
        out += name.encode() + b": " + (value.encode() if isinstance(value, str) else value)
        out += b"\r\n"
    return out + b"\r\n"


def request(method: str, target: str | bytes, body: bytes = b"",
            headers: Sequence[tuple[str, str | bytes]] = (("host", "rec.example.com"),),
            content_type: str | None = None) -> bytes:
    """A well-formed request with ``body`` and its Content-Length."""
    all_headers = list(headers)
    if content_type is not None:
        all_headers.append(("content-type", content_type))
    if body or method in ("PUT", "POST"):
        all_headers.append(("content-length", str(len(body))))
    return head(method, target, all_headers) + body


def sinch_signed(body: bytes, *, path: str = SINCH_PATH,
                 content_type: str = "application/json",
                 timestamp: str | None = None, scheme: str = "application") -> dict[str, Any]:
    """A correctly signed Sinch callback's parts: path, content type, timestamp,
    authorization, body."""
    timestamp = timestamp or datetime.now(UTC).isoformat().replace("+00:00", "Z")
    sig = sinch_signature(SINCH_SECRET, "POST", body, content_type, timestamp, path)
    return {"path": path, "content_type": content_type, "timestamp": timestamp,
            "authorization": f"{scheme} {SINCH_KEY}:{sig}", "body": body}


def sinch_request(parts: dict[str, Any]) -> bytes:
    return request("POST", parts["path"], parts["body"], headers=[
        ("host", "sink.example.com"), ("content-type", parts["content_type"]),
        ("x-timestamp", parts["timestamp"]), ("authorization", parts["authorization"])])


def laml_signed(params: Sequence[tuple[str, str]], target: str = LAML_PATH) -> tuple[str, bytes]:
    """A SignalWire callback form and its correct signature: (signature, body)."""
    return laml_signature(LAML_KEY, LAML_BASE + target, params), urlencode(params).encode()


def laml_request(target: str, body: bytes, signature: str,
                 content_type: str = "application/x-www-form-urlencoded") -> bytes:
    return request("POST", target, body, content_type=content_type, headers=[
        ("host", "sink.example.com"), ("x-signalwire-signature", signature)])


def q(value: str) -> str:
    """``value`` percent-encoded for a query or a path segment (``/`` too)."""
    return quote(value, safe="")
