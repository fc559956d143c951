"""Helpers of the console tests (tests/test_ui.py, tests/test_ui_http.py): a recsink with
``[ui]`` on and scoped tokens, uploads with numbers, and plain HTTP with a session cookie."""

from __future__ import annotations

import http.client
import io
import math
import re
import struct
import wave
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from tests.conftest import RunningServer, exchange, kazoo_put

ADMIN = "ui-admin-token-0123456789"
READER = "ui-read-token-0123456789"
TOKENS = {"api": {"tokens": [
    {"name": "supervisor", "token": ADMIN, "scopes": ["read", "delete", "hold"]},
    {"name": "agent", "token": READER, "scopes": ["read"]}]}}
UI = {"ui": {"enabled": True}, **TOKENS}


def upload(server: RunningServer, call_id: str, *, caller: str = "+4930111111",
           callee: str = "+4940222222", seconds: float = 0.2, freq: float = 440.0,
           name: str | None = None) -> tuple[dict[str, Any], bytes]:
    """A Kazoo path-A upload (a WAV tone in bursts, like words, so the waveform has a
    shape; with from/to numbers); its resource and body."""
    body = speech_like_wav(seconds, freq)
    query = {"call_id": call_id, "account_id": "a" * 32, "from": f"{caller}@pbx.example.com",
             "to": f"{callee}@pbx.example.com", "caller_id_number": caller,
             "start": "63877471200"}
    target = f"/kazoo/{quote(name or f'call_recording_{call_id}.wav')}?{urlencode(query)}"
    reply = exchange(server.port, kazoo_put(target, len(body)) + body)
    assert reply.status in (200, 201), reply.body
    return reply.json(), body


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Browserless:
    """An HTTP client of the console that keeps its session cookie."""

    server: RunningServer
    cookie: str = ""
    csrf: str = ""
    set_cookie: str = field(default="")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        sent = dict(headers or {})
        if self.cookie:
            sent["Cookie"] = self.cookie
        if body is not None:
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        answer = Answer(response.status, response.headers, response.read())
        conn.close()
        return answer

    def form(self, path: str, fields: dict[str, str],
             headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", path, urlencode(fields).encode(), headers)

    def sign_in(self, token: str, headers: dict[str, str] | None = None) -> Answer:
        """Sign in with ``token``; keeps the cookie and reads the page's CSRF token."""
        answer = self.form("/ui/signin", {"token": token}, headers)
        assert answer.status == 303, answer.body
        self.set_cookie = answer.headers["Set-Cookie"]
        self.cookie = self.set_cookie.split(";", 1)[0]
        page = self.request("GET", "/ui/")
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found, page.text
        self.csrf = found[1]
        return answer


def speech_like_wav(seconds: float, freq: float, rate: int = 8000) -> bytes:
    """A 16-bit mono WAV: a ``freq`` tone whose loudness rises and falls in bursts of about
    a third of a second, with pauses between them."""
    samples = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        envelope = max(0.0, math.sin(2 * math.pi * 1.4 * t)) * (0.55 + 0.45 * math.sin(5.3 * t))
        samples += struct.pack("<h", int(14000 * envelope * math.sin(2 * math.pi * freq * t)))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(samples))
    return out.getvalue()
