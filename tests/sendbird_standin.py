"""A local stand-in for Sendbird Calls' Platform API (specs/sendbird.md §2, §3): a real HTTP
server on 127.0.0.1 speaking the documented shapes, for tests.

* ``GET /v1/direct_calls/{call_id}`` → ``{"call": {…, "cloud_recordings": […]}}``
* ``GET /v1/rooms/{room_id}`` → ``{"room": {…, "cloud_recordings": […]}}``
* ``GET /v1/direct_calls?limit=&next=&start_ts=&end_ts=`` → ``{"calls": […], "next": …}``
  (pages of ``page_size`` calls at most, whatever ``limit`` asks)
* ``POST /v1/cloud-recordings/{recording_id}/copy`` → writes the recording's bytes into the
  bucket named in the body (on the S3 endpoint the stand-in was given: moto), at
  ``directory + %y%m%d_%H%M%S + "_" + recording_id + ".wav"``, and answers
  ``{"recording_id", "bucket", "key"}``; only ``completed`` recordings (else 400).

Every request must carry ``Api-Token`` (else 401, Sendbird's error shape). The test sets
each recording's status (:meth:`SendbirdStandIn.set_status`); ``throttle(n, seconds)``
answers the next ``n`` requests 429 with ``Retry-After``. Every request is recorded with the
monotonic time it arrived (:attr:`SendbirdStandIn.requests`).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.s3support import s3_client


@dataclass
class Seen:
    """One request the stand-in got: when (monotonic seconds), what, and its answer."""

    at: float
    method: str
    path: str
    query: dict[str, str]
    status: int
    body: dict[str, Any] = field(default_factory=dict)


@dataclass
class StandInRecording:
    recording_id: str
    status: str
    audio: bytes
    started_at: int
    stopped_at: int
    target_event_type: str

    def resource(self, owner: str, owner_id: str) -> dict[str, Any]:
        return {"recording_id": self.recording_id, "target_event_type": self.target_event_type,
                owner: owner_id, "status": self.status, "started_at": self.started_at,
                "stopped_at": self.stopped_at, "duration": self.stopped_at - self.started_at,
                "byte_size": len(self.audio), "media_type": "audio"}


class SendbirdStandIn(http.server.ThreadingHTTPServer):
    """See the module docstring; ``s3_endpoint`` is where copies are written."""

    def __init__(self, token: str, s3_endpoint: str, page_size: int = 2) -> None:
        self.token = token
        self.s3_endpoint = s3_endpoint
        self.page_size = page_size
        self.calls: dict[str, dict[str, Any]] = {}
        self.rooms: dict[str, dict[str, Any]] = {}
        self.recordings: dict[str, StandInRecording] = {}
        self.owners: dict[str, tuple[str, str]] = {}  # recording id -> (kind, owner id)
        self.requests: list[Seen] = []
        self.throttled = 0
        self.retry_after = 1
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join()

    # -- what the test sets up ------------------------------------------------------------

    def add_call(self, call_id: str, recordings: dict[str, tuple[str, bytes]],
                 ended_at: int | None = None) -> None:
        """A direct call with recordings ``{recording_id: (status, audio)}``; ended now
        unless ``ended_at`` (Unix ms, 0: still going) says otherwise."""
        now = int(time.time() * 1000)
        self.calls[call_id] = {"call_id": call_id, "started_at": now - 60_000,
                               "ended_at": now if ended_at is None else ended_at,
                               "end_result": "completed" if ended_at != 0 else None}
        self._add(recordings, "direct_call", "call_id", call_id, "call_audio")

    def add_room(self, room_id: str, recordings: dict[str, tuple[str, bytes]]) -> None:
        """A group-call room (deleted) with recordings ``{recording_id: (status, audio)}``."""
        self.rooms[room_id] = {"room_id": room_id, "state": "deleted",
                               "created_at": int(time.time() * 1000) - 60_000}
        self._add(recordings, "room", "room_id", room_id, "room_audio")

    def _add(self, recordings: dict[str, tuple[str, bytes]], kind: str, owner: str,
             owner_id: str, event_type: str) -> None:
        now = int(time.time() * 1000)
        for rid, (status, audio) in recordings.items():
            self.recordings[rid] = StandInRecording(rid, status, audio, now - 30_000, now,
                                                    event_type)
            self.owners[rid] = (kind, owner_id)

    def set_status(self, recording_id: str, status: str) -> None:
        with self.lock:
            self.recordings[recording_id].status = status

    def throttle(self, count: int, retry_after: int) -> None:
        """Answer the next ``count`` requests 429 with ``Retry-After: retry_after``."""
        with self.lock:
            self.throttled, self.retry_after = count, retry_after

    def seen(self, method: str, path: str) -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # -- answers ----------------------------------------------------------------------------

    def recordings_of(self, kind: str, owner_id: str) -> list[dict[str, Any]]:
        owner = "call_id" if kind == "direct_call" else "room_id"
        return [r.resource(owner, owner_id) for rid, r in self.recordings.items()
                if self.owners[rid] == (kind, owner_id)]

    def call(self, call_id: str) -> dict[str, Any]:
        return {**self.calls[call_id],
                "cloud_recordings": self.recordings_of("direct_call", call_id)}

    def copy(self, recording_id: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        recording = self.recordings.get(recording_id)
        if recording is None:
            return 404, {"error": True, "message": "not found", "code": 400201}
        if recording.status != "completed":
            return 400, {"error": True, "message": "not completed", "code": 400111}
        for name in ("access_key", "secret_key", "bucket", "region"):
            if not body.get(name):
                return 400, {"error": True, "message": f"{name} required", "code": 400100}
        stamp = datetime.fromtimestamp(recording.started_at / 1000, UTC).strftime(
            "%y%m%d_%H%M%S")
        key = f"{body.get('recording_file_directory', '')}{stamp}_{recording_id}.wav"
        s3 = s3_client(self.s3_endpoint)
        s3.put_object(Bucket=body["bucket"], Key=key, Body=recording.audio)
        return 200, {"recording_id": recording_id, "bucket": body["bucket"], "key": key}


class _Handler(http.server.BaseHTTPRequestHandler):
    server: SendbirdStandIn
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        arrived = time.monotonic()
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        server = self.server
        headers: dict[str, str] = {}
        with server.lock:
            if self.headers.get("Api-Token") != server.token:
                status, answer = 401, {"error": True, "message": "Invalid API Token.",
                                       "code": 400401}
            elif server.throttled:
                server.throttled -= 1
                status, answer = 429, {"error": True, "message": "Too many requests.",
                                       "code": 500910}
                headers["Retry-After"] = str(server.retry_after)
            else:
                status, answer = self._answer(method, parts.path, query, body)
            server.requests.append(Seen(arrived, method, parts.path, query, status, body))
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _answer(self, method: str, path: str, query: dict[str, str],
                body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        server = self.server
        segments = path.strip("/").split("/")
        missing = (404, {"error": True, "message": "Not found.", "code": 400201})
        if method == "GET" and segments[:2] == ["v1", "direct_calls"] and len(segments) == 3:
            if segments[2] not in server.calls:
                return missing
            return 200, {"call": server.call(segments[2])}
        if method == "GET" and segments[:2] == ["v1", "rooms"] and len(segments) == 3:
            if segments[2] not in server.rooms:
                return missing
            room = {**server.rooms[segments[2]],
                    "cloud_recordings": server.recordings_of("room", segments[2])}
            return 200, {"room": room}
        if method == "GET" and segments == ["v1", "direct_calls"]:
            return 200, self._list(query)
        if (method == "POST" and len(segments) == 4
                and segments[:2] == ["v1", "cloud-recordings"] and segments[3] == "copy"):
            return server.copy(segments[2], body)
        return missing

    def _list(self, query: dict[str, str]) -> dict[str, Any]:
        server = self.server
        start = int(query.get("start_ts", "0")) * 1000
        end = int(query.get("end_ts", str(2**40))) * 1000
        ids = sorted(c for c, call in server.calls.items()
                     if start <= call["started_at"] <= end or start <= call["ended_at"] <= end)
        offset = int(query.get("next") or 0)
        size = min(server.page_size, int(query.get("limit", "100")))
        page = ids[offset:offset + size]
        following = str(offset + size) if offset + size < len(ids) else ""
        return {"calls": [server.call(c) for c in page], "next": following}

    def log_message(self, *args: Any) -> None:
        return None
