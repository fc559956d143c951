"""Upload auth (Basic, bearer, URL tokens, client networks) and secrets kept out of logs."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from recsink import logs
from tests.conftest import TESTBODY

PATH = "/kazoo/call_recording_c1.mp3"
AUTH = {
    "basic": [{"username": "kazoo", "password": "pa55-w0rd"}],
    "bearer_tokens": ["bearer-secret-1"],
    "url_tokens": ["url-secret-2"],
}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """recsink's JSON log lines (with the configured secrets' redactor) in a buffer."""
    buffer = io.StringIO()
    secrets = ["pa55-w0rd", "bearer-secret-1", "url-secret-2"]
    logs.configure("debug", secrets, stream=buffer)
    yield buffer
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


async def test_basic_credentials(make_client: Any) -> None:
    """Basic credentials from Kazoo's ``user:pass@`` url are accepted; wrong or missing ones
    answer 401 with a Basic challenge."""
    client = await make_client(auth=AUTH)
    ok = await client.put(PATH, data=TESTBODY, headers=basic("kazoo", "pa55-w0rd"))
    assert ok.status == 201
    for headers in (basic("kazoo", "nope"), basic("other", "pa55-w0rd"), {},
                    {"Authorization": "Basic %%%"}):
        refused = await client.put(PATH, data=TESTBODY, headers=headers)
        assert refused.status == 401
        assert (await refused.json())["error"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="recsink"'


async def test_bearer_and_url_tokens(make_client: Any) -> None:
    """A bearer token, a token as first path segment, or a ``token=`` query value admits an
    upload; the path token is not part of the recording's path."""
    client = await make_client(auth=AUTH)
    bearer = await client.put("/kazoo/a.mp3", data=TESTBODY,
                              headers={"Authorization": "Bearer bearer-secret-1"})
    in_path = await client.put("/kazoo/url-secret-2/b.mp3", data=TESTBODY + b"1")
    in_query = await client.put("/kazoo/c.mp3", data=TESTBODY + b"2",
                                params={"token": "url-secret-2"})
    assert [bearer.status, in_path.status, in_query.status] == [201, 201, 201]
    assert (await in_path.json())["call_id"] == "b"
    assert "token" not in (await in_query.json())["metadata"]
    wrong = await client.put("/kazoo/wrong-token/d.mp3", data=TESTBODY)
    assert wrong.status == 401
    got = await client.get("/kazoo/url-secret-2/b.mp3")
    assert (got.status, await got.read()) == (200, TESTBODY + b"1")
    assert (await client.get("/kazoo/b.mp3")).status == 401


async def test_client_networks(make_client: Any) -> None:
    """A client outside ``auth.allow_networks`` gets 403 even with good credentials."""
    allowed = await make_client(auth={**AUTH, "allow_networks": ["127.0.0.0/8"]})
    assert (await allowed.put("/kazoo/a.mp3", data=TESTBODY,
                              params={"token": "url-secret-2"})).status == 201
    refused = await make_client(auth={**AUTH, "allow_networks": ["10.0.0.0/8", "::1/128"]})
    reply = await refused.put("/kazoo/a.mp3", data=TESTBODY, params={"token": "url-secret-2"})
    assert (reply.status, (await reply.json())["error"]) == (403, "address_not_allowed")


async def test_api_tokens(make_client: Any) -> None:
    """With ``api.tokens`` the recording API takes only those bearer tokens; without, the
    upload credentials."""
    client = await make_client(auth=AUTH, api={"tokens": ["api-token"]})
    assert (await client.get("/v1/recordings")).status == 401
    assert (await client.get("/v1/recordings", headers=basic("kazoo", "pa55-w0rd"))).status == 401
    ok = await client.get("/v1/recordings", headers={"Authorization": "Bearer api-token"})
    assert ok.status == 200
    fallback = await make_client(auth=AUTH)
    assert (await fallback.get("/v1/recordings")).status == 401
    assert (await fallback.get("/v1/recordings", headers=basic("kazoo", "pa55-w0rd"))).status == 200


async def test_no_secret_reaches_a_log_line(make_client: Any, captured: io.StringIO) -> None:
    """Passwords, bearer tokens and URL tokens, accepted or refused, never appear in logs;
    every line is one JSON object."""
    client = await make_client(auth=AUTH)
    await client.put(PATH, data=TESTBODY, headers=basic("kazoo", "pa55-w0rd"))
    await client.put("/kazoo/url-secret-2/call_recording_url-secret-2.mp3", data=TESTBODY + b"x")
    await client.put(PATH, data=b"junk", params={"token": "url-secret-2"})
    await client.put(PATH, data=TESTBODY, headers={"Authorization": "Bearer bearer-secret-1x"})
    await client.put(PATH, data=TESTBODY, headers=basic("kazoo", "pa55-w0rd-wrong"))
    text = captured.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    events = [line["event"] for line in lines]
    assert "recording.stored" in events
    assert "upload.rejected" in events
    for secret in ("pa55-w0rd", "bearer-secret-1", "url-secret-2",
                   base64.b64encode(b"kazoo:pa55-w0rd").decode()):
        assert secret not in text
    assert all({"ts", "level", "event"} <= line.keys() for line in lines)


def test_redactor_replaces_secrets_inside_values() -> None:
    """The log redactor masks a configured secret wherever it appears in a string value."""
    redact = logs.Redactor(["s3cr3t", "s3cr3t-longer"])
    event = redact(None, "info", {"event": "x", "path": "/up?token=s3cr3t-longer&a=s3cr3t",
                                  "n": 3})
    assert event == {"event": "x", "path": "/up?token=***&a=***", "n": 3}
