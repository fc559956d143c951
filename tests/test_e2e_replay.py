"""specs/kazoo.md §9 replayed byte for byte over raw sockets against ``recsink serve``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests import kazoo_wire as wire
from tests.conftest import (
    ACCOUNT,
    CALL_ID,
    OWNER,
    RECORDING_ID,
    TESTBODY,
    RunningServer,
    exchange,
    stored_files,
)

PREFIXES = {"kazoo": {"prefixes": ["/kazoo", "/recordings", "/upload"]}}


@pytest.fixture
def server(start_server: Any) -> RunningServer:
    server: RunningServer = start_server(**PREFIXES)
    return server


@pytest.mark.parametrize("name", sorted(wire.ALL))
def test_each_example_is_stored_then_deduplicated(start_server: Any, name: str) -> None:
    """Each §9 request answers 201 on a fresh server and stores its body; replayed, it answers
    200 with the same record and nothing new is stored."""
    server = start_server(**PREFIXES)
    first = exchange(server.port, wire.ALL[name])
    assert first.status == 201, first.body
    files = stored_files(server.root)
    assert [f.read_bytes() for f in files] == [
        wire.PROBE_CONTENT if name == "ex6" else TESTBODY]
    again = exchange(server.port, wire.ALL[name])
    assert again.status == 200
    assert again.json()["id"] == first.json()["id"]
    assert stored_files(server.root) == files
    assert not list((server.root / ".staging").iterdir())
    assert [e["event"] for e in server.logs() if e["event"].startswith("recording.")] == [
        "recording.stored", "recording.duplicate"]


def test_examples_naming_one_recording_are_one_recording(server: RunningServer) -> None:
    """Ex1, Ex2, Ex4 and Ex5 carry recording id 202403-0a1b…: the first stores it, the others
    answer 200 with that record; Ex3 (another leg, no id) and Ex6 (probe) are their own."""
    replies = {name: exchange(server.port, request) for name, request in wire.ALL.items()}
    assert {n: r.status for n, r in replies.items()} == {
        "ex1": 201, "ex2": 200, "ex3": 201, "ex4": 200, "ex5": 200, "ex6": 201}
    ids = {n: r.json()["id"] for n, r in replies.items()}
    assert ids["ex1"] == ids["ex2"] == ids["ex4"] == ids["ex5"]
    assert len({ids["ex1"], ids["ex3"], ids["ex6"]}) == 3
    assert len(stored_files(server.root)) == 3


def test_ex1_record_carries_decoded_metadata(server: RunningServer) -> None:
    """Ex1's query metadata is decoded onto the record; Gregorian ``start`` becomes UTC."""
    record = exchange(server.port, wire.ex1()).json()
    assert record["status"] == "completed"
    assert record["call_id"] == CALL_ID
    assert record["recording_id"] == RECORDING_ID
    assert record["account_id"] == ACCOUNT
    assert record["interaction_id"] == "63877471195-5f3a9c1e"
    assert record["from"] == "+14155550100@acme.sip.example.com"
    assert record["to"] == "1002@acme.sip.example.com"
    assert record["started_at"] == "2024-03-12T14:00:00Z"
    assert record["duration_ms"] == 65432
    assert record["byte_size"] == len(TESTBODY)
    assert record["format"] == "mp3"
    assert record["metadata"]["caller_id_name"] == "Alice Smith"
    assert record["metadata"]["owner_id"] == OWNER
    assert datetime.fromisoformat(record["stopped_at"]) == datetime(
        2024, 3, 12, 14, 1, 5, 432000, tzinfo=UTC)
    path = server.root / ACCOUNT / "2024" / "03" / "12" / f"{RECORDING_ID}.mp3"
    assert path.read_bytes() == TESTBODY
    assert record["storage_url"] == path.as_uri()


def test_ex3_endpoint_inbound_double_dot_name(server: RunningServer) -> None:
    """Ex3's ``..mp3`` name, short query and legacy ``content_type:`` header are accepted;
    with no recording id the record is keyed by call id and content."""
    record = exchange(server.port, wire.EX3).json()
    assert record["call_id"] == wire.EX3_CALL_ID
    assert record["recording_id"] is None
    assert record["started_at"] is None
    assert record["account_id"] == ACCOUNT
    assert exchange(server.port, wire.EX3).status == 200


def test_ex4_storage_plan_path_and_get_probe(server: RunningServer) -> None:
    """Ex4's storage-plan path gives account, owner and recording id; GET and HEAD on the
    same path return the exact bytes."""
    record = exchange(server.port, wire.EX4).json()
    assert (record["account_id"], record["recording_id"]) == (ACCOUNT, RECORDING_ID)
    assert record["metadata"] == {"owner_id": OWNER}
    got = exchange(server.port, wire.probe_get(wire.EX4_PATH))
    assert (got.status, got.body) == (200, TESTBODY)
    assert got.headers["content-type"] == "audio/mpeg"
    head = exchange(server.port, wire.probe_get(wire.EX4_PATH).replace(b"GET", b"HEAD", 1))
    assert (head.status, head.body, head.headers["content-length"]) == (200, b"", "1034")


def test_ex5_multipart_json_metadata(server: RunningServer) -> None:
    """Ex5's multipart body (64-char boundary with + and /, unquoted names, leading CRLF,
    no trailing CRLF) stores the media part and the JSON part's metadata."""
    record = exchange(server.port, wire.EX5).json()
    assert record["call_id"] == CALL_ID
    assert record["recording_id"] == RECORDING_ID
    assert record["started_at"] == "2024-03-12T14:00:00Z"
    assert record["from"] == "+14155550100@acme.sip.example.com"
    assert record["metadata"]["callee_id_name"] == "Bob Jones"
    assert record["metadata"]["custom_channel_vars"]["Account-ID"] == ACCOUNT
    assert stored_files(server.root)[0].read_bytes() == TESTBODY


def test_ex5_base64_media_part_is_decoded(server: RunningServer) -> None:
    """With ``base64_encode_data`` the media part is base64 text; the decoded audio is
    stored and served."""
    reply = exchange(server.port, wire.multipart_request(wire.EX5_BASE64_BODY))
    assert reply.status == 201
    assert reply.json()["byte_size"] == len(TESTBODY)
    assert exchange(server.port, wire.probe_get(wire.EX4_PATH)).body == TESTBODY


def test_ex6_probe_then_get_and_doubled_get(server: RunningServer) -> None:
    """The storage-settings probe is stored and read back exactly, on the upload path and on
    the doubled-segment path with a metadata query (§5.5)."""
    assert exchange(server.port, wire.EX6).status == 201
    for path in (wire.EX6_PATH, wire.EX6_DOUBLED_GET_PATH):
        got = exchange(server.port, wire.probe_get(path))
        assert (got.status, got.body) == (200, wire.PROBE_CONTENT), path


def test_raw_utf8_caller_name_is_accepted(server: RunningServer) -> None:
    """A raw UTF-8 caller name in the query (José, §8.1) is stored decoded, not refused."""
    reply = exchange(server.port, wire.ex1(caller_id_name="Jos\u00e9%20Garc\u00eda"))
    assert reply.status == 201
    assert reply.json()["metadata"]["caller_id_name"] == "José García"


def test_ex2_with_basic_auth_and_query_token(start_server: Any) -> None:
    """Ex2 authenticates by Basic (``user:pass@`` in Kazoo's url) or by its ``token=`` query;
    neither the password nor the token reaches the logs or the record."""
    basic = start_server("basic", auth={"basic": [{"username": "kazoo", "password": "pa55"}]},
                         **PREFIXES)
    token = start_server("token", auth={"url_tokens": ["s3cr3t"]}, **PREFIXES)
    for server in (basic, token):
        reply = exchange(server.port, wire.EX2)
        assert reply.status == 201, reply.body
        assert "token" not in reply.json()["metadata"]
        assert exchange(server.port, wire.ex1()).status == 401
        server.stop()
        text = server.log_path.read_text()
        assert "s3cr3t" not in text
        assert "pa55" not in text
        assert "a2F6b286cGE1NQ" not in text
