"""Signed webhooks from the outbox, end to end: real ``recsink serve`` processes, and a real
receiver process (tests/webhook_receiver.py) that verifies every request with the
``standardwebhooks`` package and records what it got (specs/webhooks.md)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from recsink.config import Settings, forbidden
from tests.conftest import (
    ACCOUNT,
    REPO,
    RunningServer,
    api_get,
    base_config,
    exchange,
    kazoo_put,
    make_wav,
    merge,
    path_a,
    start_server_process,
    wait_for,
)


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Receiver:
    """A tests/webhook_receiver.py process."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/recsink?tenant=t1"

    def requests(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line]

    def plan(self, statuses: list[int], default: int = 200) -> None:
        body = json.dumps({"plan": statuses, "default": default}).encode()
        reply = exchange(self.port, b"PUT /plan HTTP/1.1\r\nhost: x\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert reply.status == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


Receivers = Callable[..., Receiver]


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[Receivers]:
    """``receivers(*secrets, port=0, plan=[])``: a receiver process on 127.0.0.1, killed
    by pid at the end of the test."""
    started: list[Receiver] = []

    def start(*secrets: str, port: int = 0, plan: list[int] | None = None,
              name: str = "receiver") -> Receiver:
        log = tmp_path / f"{name}.jsonl"
        log.touch()
        port_file = log.with_suffix(".port")
        port_file.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.webhook_receiver", str(port), str(log), *secrets],
            cwd=REPO)
        wait_for(lambda: (port_file.exists() and port_file.read_text())
                 or proc.poll() is not None)
        assert proc.poll() is None, "the receiver did not start"
        receiver = Receiver(proc, int(port_file.read_text()), log)
        started.append(receiver)
        if plan:
            receiver.plan(plan)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hooks(url: str, *secrets: str, schedule: tuple[float, ...] = (0.1, 0.1),
          **endpoint: Any) -> dict[str, Any]:
    """The ``[webhooks]`` section for one endpoint."""
    return {"webhooks": {"retry_schedule": list(schedule), "timeout": 5.0,
                         "endpoints": [{"url": url, "secrets": list(secrets), **endpoint}]}}


def upload(server: RunningServer, n: int, expect: int = 201) -> tuple[str, str]:
    """Upload recording ``n`` (distinct bytes per ``n``) through Kazoo path A; its recsink
    id and sha256."""
    body = make_wav(0.2, freq=200.0 + 7 * n)
    target = path_a(f"hook-call-{n}", f"202612-hook-{n:04d}")
    reply = exchange(server.port, kazoo_put(target, len(body)) + body)
    assert reply.status == expect, reply.body
    return reply.json()["id"], hashlib.sha256(body).hexdigest()


def post(server: RunningServer, target: str) -> Any:
    reply = exchange(server.port, f"POST {target} HTTP/1.1\r\nhost: x\r\n"
                     "content-length: 0\r\n\r\n".encode())
    return reply.status, reply.json()


def received(receiver: Receiver, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The receiver's requests once it has at least ``count``."""
    def enough() -> list[dict[str, Any]] | None:
        got = receiver.requests()
        return got if len(got) >= count else None

    found: list[dict[str, Any]] = wait_for(enough, timeout)
    return found


def deliveries(server: RunningServer, query: str = "") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = api_get(server, f"/v1/webhooks/deliveries{query}")[
        "deliveries"]
    return found


def test_twenty_uploads_send_twenty_signed_events_and_a_duplicate_none(
    start_server: Callable[..., RunningServer], receivers: Receivers,
) -> None:
    """20 uploads: 20 recording.completed requests, each signature valid, distinct
    webhook-ids, each recording's sha256 in data, no media URL or secret in the body; a
    duplicate upload makes no delivery (the next recording's event arrives; the duplicate's
    recording still has one delivery)."""
    secret = new_secret()
    receiver = receivers(secret)
    server = start_server(**hooks(receiver.url, secret))
    sent = dict(upload(server, n) for n in range(20))
    received(receiver, 20)
    first_id = next(iter(sent))
    upload(server, 0, expect=200)  # a duplicate
    upload(server, 20)
    requests = received(receiver, 21)
    assert len(requests) == 21
    assert all(r["verified"] == [True] and r["status"] == 200 for r in requests)
    assert all(r["path"] == "/hooks/recsink?tenant=t1" for r in requests)
    ids = [r["headers"]["webhook-id"] for r in requests]
    assert len(set(ids)) == 21
    bodies = [json.loads(r["body"]) for r in requests]
    assert {b["type"] for b in bodies} == {"recording.completed"}
    by_record = {b["data"]["id"]: b["data"]["sha256"] for b in bodies}
    assert len(by_record) == 21
    assert {k: by_record[k] for k in sent} == sent
    for request, body in zip(requests, bodies, strict=True):
        assert body["timestamp"].endswith("Z")
        assert body["data"]["status"] == "completed"
        assert len(request["body"].encode()) < 20_000
        assert "http" not in json.dumps(body["data"])  # no media URL
        assert secret not in request["body"]
        assert request["headers"]["content-type"] == "application/json"
    assert len(deliveries(server, f"?recording_id={first_id}")) == 1
    done = deliveries(server, "?state=delivered")
    assert len(done) == 21
    assert {d["id"] for d in done} == set(ids)  # webhook-id is the delivery's id
    assert all(d["attempts"] == 1 and d["last_status"] == 200 and d["endpoint"] == 0
               for d in done)
    assert len(server.events("webhook.delivered")) == 21
    assert secret not in server.log_path.read_text()


def test_a_receiver_failing_twice_gets_the_third_attempt_with_the_same_id(
    start_server: Callable[..., RunningServer], receivers: Receivers,
) -> None:
    """A receiver that answers 500, 500, then 200 gets the event on the third attempt, with
    the same webhook-id (and a valid signature) every time; the delivery is delivered after
    3 attempts."""
    secret = new_secret()
    receiver = receivers(secret, plan=[500, 500])
    server = start_server(**hooks(receiver.url, secret, schedule=(0.1, 0.1)))
    record_id, _ = upload(server, 1)
    requests = received(receiver, 3)
    assert [r["status"] for r in requests] == [500, 500, 200]
    assert len({r["headers"]["webhook-id"] for r in requests}) == 1
    assert all(r["verified"] == [True] for r in requests)
    assert len({r["body"] for r in requests}) == 1
    [delivery] = wait_for(lambda: [d for d in deliveries(server, "?state=delivered")])
    assert (delivery["recording_id"], delivery["attempts"], delivery["last_status"]) == (
        record_id, 3, 200)
    assert len(server.events("webhook.retry")) == 2


def test_events_survive_kill_9_while_the_receiver_is_down(
    start_server: Callable[..., RunningServer], receivers: Receivers, tmp_path: Path,
) -> None:
    """The receiver is down while 5 recordings arrive and recsink is killed with kill -9
    before any delivery: after the restart and the receiver's return, all 5 arrive."""
    secret = new_secret()
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    server = start_server(**hooks(url, secret, schedule=(0.5, 1, 1, 2, 2, 5, 5, 10, 10)))
    sent = dict(upload(server, n) for n in range(5))
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    restarted = start_server_process(server.workdir, server.config)
    try:
        receiver = receivers(secret, port=port)
        requests = received(receiver, 5)
        wait_for(lambda: len(deliveries(restarted, "?state=delivered")) == 5, 30)
        bodies = [json.loads(r["body"]) for r in receiver.requests()]
        assert {b["data"]["id"]: b["data"]["sha256"] for b in bodies} == sent
        assert all(r["verified"] == [True] for r in requests)
    finally:
        restarted.proc.kill()
        restarted.proc.wait()


def test_two_instances_on_one_postgresql_catalog_deliver_each_event_once(
    start_server: Callable[..., RunningServer], receivers: Receivers, pg_dsn: str,
    tmp_path: Path,
) -> None:
    """Two instances share one PostgreSQL catalog (and each fans out and sends): 12
    recordings uploaded over both are delivered once each, one attempt each."""
    secret = new_secret()
    receiver = receivers(secret)
    servers = [start_server(name, **merge(hooks(receiver.url, secret),
                                          {"catalog": {"url": pg_dsn}}))
               for name in ("a", "b")]
    sent = dict(upload(servers[n % 2], n) for n in range(12))
    wait_for(lambda: len(deliveries(servers[0], "?state=delivered")) == 12, 30)
    requests = receiver.requests()
    assert len(requests) == 12
    assert len({r["headers"]["webhook-id"] for r in requests}) == 12
    bodies = [json.loads(r["body"]) for r in requests]
    assert {b["data"]["id"]: b["data"]["sha256"] for b in bodies} == sent
    assert all(d["attempts"] == 1 for d in deliveries(servers[1], "?state=delivered"))
    senders = {s.workdir.name: len(s.events("webhook.delivered")) for s in servers}
    assert sum(senders.values()) == 12, senders


def test_410_disables_the_endpoint_and_a_failed_delivery_retried_through_the_api_arrives(
    start_server: Callable[..., RunningServer], receivers: Receivers,
) -> None:
    """A 410 disables the endpoint (logged, counted, listed) and fails its delivery;
    nothing is sent to it while disabled; re-enabled through the API, its pending delivery
    arrives, and the failed one, retried through the API, arrives with its webhook-id."""
    secret = new_secret()
    receiver = receivers(secret, plan=[410])
    server = start_server(**hooks(receiver.url, secret))
    first_id, _ = upload(server, 1)
    [gone] = received(receiver, 1)
    assert gone["status"] == 410
    [failed] = wait_for(lambda: deliveries(server, "?state=failed"))
    assert (failed["recording_id"], failed["last_status"]) == (first_id, 410)
    [line] = wait_for(lambda: server.events("webhook.endpoint_disabled"))
    assert line["endpoint"] == 0
    [endpoint] = api_get(server, "/v1/webhooks/endpoints")["endpoints"]
    assert endpoint["disabled"] is True
    metrics = exchange(server.port, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").body
    assert b'recsink_webhook_endpoints_disabled_total{endpoint="0"} 1.0' in metrics

    second_id, _ = upload(server, 2)
    wait_for(lambda: deliveries(server, f"?recording_id={second_id}&state=pending"))
    assert len(receiver.requests()) == 1  # disabled: not sent
    status, enabled = post(server, "/v1/webhooks/endpoints/0/enable")
    assert (status, enabled["was_disabled"]) == (200, True)
    requests = received(receiver, 2)
    assert json.loads(requests[1]["body"])["data"]["id"] == second_id

    status, retried = post(server, f"/v1/webhooks/deliveries/{failed['id']}/retry")
    assert (status, retried["state"]) == (202, "pending")
    requests = received(receiver, 3)
    assert requests[2]["headers"]["webhook-id"] == gone["headers"]["webhook-id"]
    assert requests[2]["status"] == 200
    assert all(r["verified"] == [True] for r in requests)
    wait_for(lambda: len(deliveries(server, "?state=delivered")) == 2)
    assert post(server, "/v1/webhooks/deliveries/msg_nope/retry")[0] == 404


def test_with_two_secrets_a_receiver_holding_either_verifies(
    start_server: Callable[..., RunningServer], receivers: Receivers,
) -> None:
    """With two secrets configured (a rotation), every request carries two signatures and a
    receiver holding either secret alone verifies it; one holding another secret does not."""
    new, old, other = new_secret(), new_secret(), new_secret()
    receiver = receivers(new, old, other)
    server = start_server(**hooks(receiver.url, new, old))
    upload(server, 3)
    [request] = received(receiver, 1)
    assert request["verified"] == [True, True, False]
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in request["headers"]["webhook-signature"].split())
    assert new not in server.log_path.read_text()
    assert old not in server.log_path.read_text()


def test_endpoint_filters_choose_what_is_sent(
    start_server: Callable[..., RunningServer], receivers: Receivers,
) -> None:
    """An endpoint whose account filter does not match gets nothing, one whose filter
    matches gets the event (the first event it gets is the matching one)."""
    secret = new_secret()
    wrong = receivers(secret, name="wrong")
    right = receivers(secret, name="right")
    config = hooks(wrong.url, secret, account_ids=["someone-else"])
    config["webhooks"]["endpoints"].append(
        {"url": right.url, "secret": secret, "sources": ["kazoo"],
         "events": ["recording.completed"]})
    server = start_server(**config)
    record_id, _ = upload(server, 4)
    [request] = received(right, 1)
    assert json.loads(request["body"])["data"]["id"] == record_id
    [delivery] = deliveries(server, f"?recording_id={record_id}")
    assert delivery["endpoint"] == 1
    assert wrong.requests() == []


def test_webhook_secrets_are_validated(tmp_path: Path) -> None:
    """A secret that is not whsec_ + base64 of 24-64 bytes is refused at start, naming the
    key; an endpoint without a secret too."""
    def check(*secrets: str) -> str:
        config = merge(base_config(tmp_path), hooks("http://127.0.0.1:9/x", *secrets))
        path = tmp_path / "bad.toml"
        path.write_text(tomli_w.dumps(config))
        done = subprocess.run([sys.executable, "-m", "recsink", "check-config", "--config",
                               str(path)], capture_output=True, text=True, cwd=REPO)
        assert done.returncode == 2
        return done.stderr

    assert "webhooks.endpoints.0.secrets: must be whsec_" in check("whsec_c2hvcnQ=")
    assert "an endpoint needs a signing secret" in check()


def test_link_local_and_metadata_receivers_are_refused() -> None:
    """A receiver URL at a link-local or metadata address is refused unless
    webhooks.allow_link_local; the guard that also filters DNS answers names exactly those
    addresses."""
    secret = new_secret()
    for url in ("http://169.254.169.254/latest/meta-data", "http://[fe80::1]/x",
                "http://100.100.100.200/x"):
        with pytest.raises(ValueError, match="link-local or metadata address"):
            Settings(**hooks(url, secret))
        assert Settings(**merge(hooks(url, secret), {"webhooks": {"allow_link_local": True}}))
    assert [forbidden(a) for a in ("169.254.169.254", "fe80::1%eth0", "0.0.0.0",
                                   "fd00:ec2::254", "127.0.0.1", "10.0.0.1", "::1")] == [
        True, True, True, True, False, False, False]


def test_a_deletion_sends_recording_deleted_with_the_tombstone_only(
    start_server: Callable[..., RunningServer], receivers: Receivers,
) -> None:
    """``DELETE /v1/recordings/{id}`` sends ``recording.deleted`` (after the recording's
    ``recording.completed``) whose data is the tombstone: status deleted with its reason,
    the sha256 kept, no call id, account or file name; both deliveries are listed."""
    secret, token = new_secret(), "delete-scoped-token"
    receiver = receivers(secret)
    server = start_server(**hooks(receiver.url, secret),
                          api={"tokens": [{"name": "dpo", "token": token,
                                           "scopes": ["read", "delete"]}]})
    record_id, sha256 = upload(server, 1)
    received(receiver, 1)
    reply = exchange(server.port, f"DELETE /v1/recordings/{record_id} HTTP/1.1\r\nhost: x\r\n"
                     f"authorization: Bearer {token}\r\n\r\n".encode())
    assert reply.status == 200, reply.body
    completed, deleted = (json.loads(r["body"]) for r in received(receiver, 2))
    assert (completed["type"], deleted["type"]) == ("recording.completed", "recording.deleted")
    assert all(r["verified"] == [True] for r in receiver.requests())
    data = deleted["data"]
    assert (data["id"], data["status"], data["sha256"]) == (record_id, "deleted", sha256)
    assert data["deletion_reason"] == "api"
    text = json.dumps(data)
    for personal in ("hook-call-1", ACCOUNT, "call_recording_"):
        assert personal not in text
    listed = exchange(server.port, b"GET /v1/webhooks/deliveries HTTP/1.1\r\nhost: x\r\n"
                      b"authorization: Bearer " + token.encode() + b"\r\n\r\n").json()
    assert sorted(d["type"] for d in listed["deliveries"]) == [
        "recording.completed", "recording.deleted"]
    assert token not in server.log_path.read_text()
