"""Signed Sinch notify events (specs/callbacks.md §A) and the catalog check afterwards.

Each call is two events sent in order on one keep-alive connection, as a platform's
notifier sends them: ``recording_finished`` (the record becomes ``uploading``), then
``recording_available`` with its ``destination`` (``completed``, the destination as its
``storage_url``, since ``sinch.pull`` is off). Requests are signed with the ``application``
scheme (:func:`recsink.sources.sinch.signature`) before the clock starts. Afterwards the
catalog itself is read (SQLite read-only, or the row's PostgreSQL database) to check that
every call has its one record, ``completed``.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from bench.common import HOST
from bench.loadgen import Request
from recsink.sources.sinch import signature

PATH = "/sinch/voice"
CONTENT_TYPE = "application/json"


def new_application() -> tuple[str, str]:
    """A (key, Base64 secret) pair for the run."""
    return f"bench-{uuid.uuid4()}", base64.b64encode(os.urandom(32)).decode()


def destination(call_id: str) -> str:
    return f"s3://bench-sinch-recordings/voice/{call_id}.mp3"


def event_request(key: str, secret: str, call_id: str, kind: str) -> Request:
    """One signed notify event of type ``kind`` for ``call_id``."""
    event: dict[str, object] = {"event": "notify", "callid": call_id, "version": 1,
                                "type": kind}
    if kind == "recording_available":
        event["destination"] = destination(call_id)
    body = json.dumps(event, separators=(",", ":")).encode()
    timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    sig = signature(secret, "POST", body, CONTENT_TYPE, timestamp, PATH)
    head = (f"POST {PATH} HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: {CONTENT_TYPE}\r\n"
            f"x-timestamp: {timestamp}\r\nauthorization: application {key}:{sig}\r\n"
            f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n").encode()
    return Request(f"{call_id}:{kind}", head, data=body)


def call_jobs(key: str, secret: str, row: str, events: int) -> list[tuple[Request, Request]]:
    """``events`` events as ``events // 2`` calls of (finished, available)."""
    calls = [f"{row}-{i:05d}-{uuid.uuid4().hex[:8]}" for i in range(max(1, events // 2))]
    return [(event_request(key, secret, call, "recording_finished"),
             event_request(key, secret, call, "recording_available")) for call in calls]


SINCH_RECORDS = "SELECT call_id, status, storage_url FROM recordings WHERE source = 'sinch'"


def catalog_rows(catalog: Path | str) -> list[tuple[str, str, str]]:
    """``(call_id, status, storage_url)`` of every ``sinch`` record in the catalog: a
    SQLite file (opened read-only) or a PostgreSQL DSN."""
    if isinstance(catalog, str):
        with psycopg.connect(catalog, autocommit=True, connect_timeout=10) as conn:
            return [(str(a), str(b), str(c)) for a, b, c in conn.execute(SINCH_RECORDS)]
    con = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True)
    try:
        return [(str(a), str(b), str(c)) for a, b, c in con.execute(SINCH_RECORDS)]
    finally:
        con.close()


def verify_catalog(catalog: Path | str, jobs: list[tuple[Request, Request]]) -> list[str]:
    """Problems with the catalog (a SQLite path or a PostgreSQL DSN) for these calls: each
    must have exactly one ``sinch`` record, ``completed``, with its destination as
    ``storage_url``."""
    calls = {finished.tag.partition(":")[0] for finished, _ in jobs}
    rows = catalog_rows(catalog)
    found: dict[str, list[tuple[str, str]]] = {}
    for call_id, status, storage_url in rows:
        if call_id in calls:
            found.setdefault(call_id, []).append((status, storage_url))
    problems = []
    missing = calls - found.keys()
    if missing:
        problems.append(f"{len(missing)} of {len(calls)} calls have no record "
                        f"(e.g. {sorted(missing)[:3]})")
    for call_id, records in found.items():
        if records != [("completed", destination(call_id))]:
            problems.append(f"call {call_id}: records {records}")
            if len(problems) > 5:
                break
    return problems
