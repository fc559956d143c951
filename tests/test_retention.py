"""Retention, erasure and legal hold, end to end: real ``recsink serve`` processes on disk
and on moto S3 (and two on one PostgreSQL catalog), scoped API tokens, the erasure log and
``recsink erasures reapply`` after a restore."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import tomli_w

from tests.conftest import (
    RunningServer,
    base_config,
    exchange,
    kazoo_put,
    make_wav,
    merge,
    stored_files,
    wait_for,
)
from tests.s3support import MotoServer, S3Client, recordings, s3_config

ADMIN = "admin-token-0123456789"
READER = "read-token-0123456789"
ACCOUNT_A = "a" * 32
ACCOUNT_B = "b" * 32
TOKENS = {"api": {"tokens": [
    {"name": "compliance", "token": ADMIN, "scopes": ["read", "delete", "hold"]}, READER]}}
#: Personal fields a tombstone must not carry (the resource's names).
PERSONAL = ("call_id", "interaction_id", "account_id", "from", "to", "started_at",
            "stopped_at", "storage_url", "name", "error", "pull", "shipping", "hold")


@dataclass
class Site:
    """A recsink process and a way to list the objects of its storage."""

    server: RunningServer
    objects: Callable[[], list[str]]


Start = Callable[..., Site]


@pytest.fixture(params=["disk", "s3"])
def site(request: pytest.FixtureRequest, start_server: Callable[..., RunningServer],
         tmp_path: Path) -> Start:
    """``site(**sections)``: a recsink process on disk storage, or on a fresh moto bucket."""

    def start(name: str = "server", **sections: Any) -> Site:
        if request.param == "disk":
            server = start_server(name, **merge(TOKENS, sections))
            return Site(server, lambda: [str(p) for p in stored_files(server.root)])
        moto: MotoServer = request.getfixturevalue("moto")
        s3: S3Client = request.getfixturevalue("s3")
        bucket: str = request.getfixturevalue("bucket")
        config = s3_config(bucket, moto.url, spool_dir=str(tmp_path / name / "spool"))
        server = start_server(name, **merge(merge(config, TOKENS), sections))
        return Site(server, lambda: sorted(recordings(s3, bucket)))

    return start


def upload(server: RunningServer, call_id: str, recording_id: str | None = None, *,
           account: str = ACCOUNT_A, caller: str = "+4930111111", callee: str = "+4940222222",
           tone: float = 440.0) -> dict[str, Any]:
    """A Kazoo path-A upload with numbers and caller metadata; its resource (201 or 200)."""
    body = make_wav(0.2, freq=tone)
    query = {"call_id": call_id, "account_id": account, "from": f"{caller}@pbx.example.com",
             "to": f"{callee}@pbx.example.com", "caller_id_number": caller,
             "caller_id_name": "José Example", "start": "63877471200"}
    if recording_id:
        query["recording_id"] = recording_id
    target = f"/kazoo/call_recording_{call_id}.wav?{urlencode(query)}"
    reply = exchange(server.port, kazoo_put(target, len(body)) + body)
    assert reply.status in (200, 201), reply.body
    resource: dict[str, Any] = reply.json()
    return resource


def api(server: RunningServer, method: str, target: str, body: Any = None,
        token: str = ADMIN) -> tuple[int, Any]:
    """An API request with a bearer token; (status, JSON body)."""
    data = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {target} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n")
    reply = exchange(server.port, head.encode() + data)
    return reply.status, reply.json()


def record(server: RunningServer, record_id: str) -> dict[str, Any]:
    status, body = api(server, "GET", f"/v1/recordings/{record_id}")
    assert status == 200, body
    return dict(body)


def assert_tombstone(resource: dict[str, Any], kept: dict[str, Any], reason: str) -> None:
    """``resource`` is a tombstone for ``reason`` keeping ids, source and sha256 only."""
    assert resource["status"] == "deleted"
    assert resource["deletion_reason"] == reason
    assert resource["deleted_at"]
    for name in ("id", "source", "recording_id", "sha256"):
        assert resource[name] == kept[name]
    for name in PERSONAL:
        assert resource[name] is None, name
    assert resource["metadata"] == {}
    text = json.dumps({k: v for k, v in resource.items() if k != "recording_id"})
    for secret in ("4930111111", "4940222222", "José", kept["call_id"]):
        assert secret not in text


def test_keep_3_deletes_older_recordings_and_keeps_younger_and_held_ones(site: Start) -> None:
    """A rule keep = 3 deletes recordings older than 3 s (object and personal fields), and
    keeps those younger than 3 s and the held ones, whose objects stay."""
    running = site(retention={"sweep_interval": 0.2, "rules": [{"keep": 3}]})
    server = running.server
    old = [upload(server, f"old-{n}", f"rid-old-{n}", tone=300 + n) for n in range(3)]
    status, held = api(server, "PUT", f"/v1/recordings/{old[2]['id']}/hold",
                       {"reason": "dispute 42"})
    assert status == 200
    assert held["hold"]["reason"] == "dispute 42"
    # The old ones are 2 s old (the age is what is tested), then young ones arrive.
    received = datetime.fromisoformat(old[-1]["received_at"])
    wait_for(lambda: (datetime.now(received.tzinfo) - received).total_seconds() >= 2.0)
    young = [upload(server, f"young-{n}", f"rid-young-{n}", tone=500 + n) for n in range(2)]
    wait_for(lambda: all(record(server, r["id"])["status"] == "deleted" for r in old[:2]))
    assert [record(server, r["id"])["status"] for r in young] == ["completed"] * 2
    for gone in old[:2]:
        assert_tombstone(record(server, gone["id"]), gone, "retention")
    assert len(running.objects()) == 3  # two young, one held
    # Later the young ones expire too; the held one never does.
    wait_for(lambda: all(record(server, r["id"])["status"] == "deleted" for r in young))
    assert record(server, old[2]["id"])["status"] == "completed"
    assert len(running.objects()) == 1
    deleted = [e["id"] for e in server.events("recording.deleted")]
    assert sorted(deleted) == sorted(r["id"] for r in old[:2] + young)


def test_erasure_by_call_account_and_number_reports_held_ones(site: Start) -> None:
    """POST /v1/erasures by call id, by account id and by number deletes every matching
    recording (the number matched in from, to and the caller's metadata) and reports the
    held ones, which stay; GET /v1/erasures lists the three."""
    server = site().server
    by_call = [upload(server, "call-x", f"rid-x-{n}", tone=300 + n) for n in range(2)]
    by_account = [upload(server, f"acct-{n}", f"rid-b-{n}", account=ACCOUNT_B, tone=400 + n)
                  for n in range(2)]
    as_caller = upload(server, "num-1", "rid-n-1", caller="+4930999999", tone=500)
    as_callee = upload(server, "num-2", "rid-n-2", callee="+49 30 999999", tone=501)
    held = upload(server, "num-3", "rid-n-3", caller="+4930999999", tone=502)
    bystander = upload(server, "other", "rid-other", caller="+4930999998", tone=503)
    assert api(server, "PUT", f"/v1/recordings/{held['id']}/hold", {"reason": "court"})[0] \
        == 200

    status, erased = api(server, "POST", "/v1/erasures", {"call_id": "call-x"})
    assert status == 202
    assert (erased["matched"], erased["deleted"], erased["held"]) == (
        2, 2, [])
    assert erased["id"].startswith("era_")
    status, erased = api(server, "POST", "/v1/erasures", {"account_id": ACCOUNT_B})
    assert status == 202
    assert (erased["matched"], erased["deleted"]) == (2, 2)
    status, erased = api(server, "POST", "/v1/erasures", {"number": "+4930999999"})
    assert status == 202
    assert (erased["matched"], erased["deleted"], erased["held"]) == (3, 2, [held["id"]])
    for gone in by_call + by_account + [as_caller, as_callee]:
        reason = record(server, gone["id"])["deletion_reason"]
        assert reason.startswith("erasure:era_")
    assert record(server, held["id"])["status"] == "completed"
    assert record(server, bystander["id"])["status"] == "completed"
    status, listed = api(server, "GET", "/v1/erasures", token=READER)
    assert status == 200
    assert len(listed["erasures"]) == 3
    log = Path(server.workdir / "var" / "erasures.jsonl").read_text().splitlines()
    assert [json.loads(line)["selector"] for line in log] == [
        {"call_id": "call-x"}, {"account_id": ACCOUNT_B}, {"number": "+4930999999"}]
    assert len(server.events("erasure.applied")) == 3
    assert all(e["by"] == "compliance" for e in server.events("erasure.applied"))


def test_tombstone_has_no_personal_data_and_a_retry_stores_nothing(site: Start) -> None:
    """DELETE /v1/recordings/{id} answers 200 with a tombstone carrying no personal data;
    the object is gone; Kazoo retrying the same recording then answers 200 with the
    tombstone and stores nothing; a held recording answers 409 legal_hold."""
    running = site()
    server = running.server
    first = upload(server, "call-t", "rid-t")
    held = upload(server, "call-h", "rid-h", tone=600)
    assert len(running.objects()) == 2
    status, tombstone = api(server, "DELETE", f"/v1/recordings/{first['id']}")
    assert status == 200
    assert_tombstone(tombstone, first, "api")
    assert len(running.objects()) == 1
    retry = upload(server, "call-t", "rid-t")
    assert retry["id"] == first["id"]
    assert retry["status"] == "deleted"
    assert_tombstone(retry, first, "api")
    assert len(running.objects()) == 1
    assert api(server, "DELETE", f"/v1/recordings/{first['id']}")[0] == 200  # idempotent
    assert api(server, "PUT", f"/v1/recordings/{held['id']}/hold", {"reason": "x"})[0] == 200
    status, refused = api(server, "DELETE", f"/v1/recordings/{held['id']}")
    assert (status, refused["error"]) == (409, "legal_hold")
    status, released = api(server, "DELETE", f"/v1/recordings/{held['id']}/hold")
    assert status == 200
    assert released["hold"] is None
    assert api(server, "DELETE", f"/v1/recordings/{held['id']}")[0] == 200
    assert running.objects() == []
    deleted = server.events("recording.deleted")
    assert [e["by"] for e in deleted] == ["compliance", "compliance"]
    assert ADMIN not in server.log_path.read_text()


def test_a_read_only_token_gets_403_on_delete_hold_and_erasure(site: Start) -> None:
    """A plain-string token (scope read) reads, but gets 403 missing_scope on DELETE, on
    putting and lifting a hold and on an erasure; nothing is deleted or held."""
    running = site()
    server = running.server
    stored = upload(server, "call-r", "rid-r")
    assert api(server, "GET", f"/v1/recordings/{stored['id']}", token=READER)[0] == 200
    for method, target, body in [
            ("DELETE", f"/v1/recordings/{stored['id']}", None),
            ("PUT", f"/v1/recordings/{stored['id']}/hold", {"reason": "x"}),
            ("DELETE", f"/v1/recordings/{stored['id']}/hold", None),
            ("POST", "/v1/erasures", {"call_id": "call-r"})]:
        status, refused = api(server, method, target, body, token=READER)
        assert (status, refused["error"]) == (403, "missing_scope"), (method, target)
    current = record(server, stored["id"])
    assert current["status"] == "completed"
    assert current["hold"] is None
    assert len(running.objects()) == 1
    assert READER not in server.log_path.read_text()
    assert {e.get("token") for e in server.events("request.rejected")} == {"token-1"}


def reapply(workdir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Run ``recsink erasures reapply`` on ``config``; its JSON report."""
    path = workdir / "reapply.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "recsink", "erasures", "reapply",
                           "--config", str(path)], cwd=workdir, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_reapply_after_restoring_an_older_catalog_and_objects_deletes_them_again(
        start_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    """After an erasure and an API delete, restoring the SQLite catalog file and the
    objects from before brings them back; ``recsink erasures reapply`` deletes them again
    (objects and records), keeps the held one, and reports what it found."""
    server = start_server("site", **TOKENS)
    erased = [upload(server, "call-e", f"rid-e-{n}", tone=300 + n) for n in range(2)]
    single = upload(server, "call-s", "rid-s", tone=400)
    held = upload(server, "call-e", "rid-e-held", tone=500)
    keep = upload(server, "call-k", "rid-k", tone=600)
    assert api(server, "PUT", f"/v1/recordings/{held['id']}/hold", {"reason": "x"})[0] == 200
    assert server.stop() == 0
    backup = tmp_path / "backup"
    shutil.copytree(server.root, backup / "recordings")
    catalog = Path(server.config["catalog"]["path"])
    shutil.copy2(catalog, backup / "recsink.db")  # stopped: the WAL is checkpointed
    server = start_server("site", **TOKENS)
    assert api(server, "POST", "/v1/erasures", {"call_id": "call-e"})[1]["deleted"] == 2
    assert api(server, "DELETE", f"/v1/recordings/{single['id']}")[0] == 200
    assert len(stored_files(server.root)) == 2
    assert server.stop() == 0

    shutil.rmtree(server.root)
    shutil.copytree(backup / "recordings", server.root)
    for leftover in catalog.parent.glob(catalog.name + "-*"):
        leftover.unlink()
    shutil.copy2(backup / "recsink.db", catalog)
    assert len(stored_files(server.root)) == 5  # the restore brought them back

    report = reapply(server.workdir, merge(base_config(server.workdir), TOKENS))
    assert (report["entries"], report["deleted"], report["held"]) == (2, 3, 1)
    erasure, deletion = report["reports"]
    assert (erasure["matched"], erasure["deleted"], erasure["held"]) == (3, 2, [held["id"]])
    assert deletion == {"type": "deletion", "id": single["id"], "found": "deleted"}
    assert len(stored_files(server.root)) == 2  # the held one and the kept one
    server = start_server("site", **TOKENS)
    for gone in [*erased, single]:
        assert record(server, gone["id"])["status"] == "deleted"
    assert record(server, keep["id"])["status"] == "completed"
    # Applied once more: everything found already deleted.
    assert server.stop() == 0
    again = reapply(server.workdir, merge(base_config(server.workdir), TOKENS))
    assert again["deleted"] == 0
    assert again["reports"][1]["found"] == "already_deleted"


def test_an_object_locked_by_s3_stays_completed_and_is_retried(
        start_server: Callable[..., RunningServer], moto: MotoServer, s3: S3Client,
        tmp_path: Path) -> None:
    """In a bucket with S3 Object Lock, a recording whose object has a legal hold of the
    bucket's own is not deleted: it stays completed with the reason, logged
    (recording.delete_refused), and is deleted by a later sweep once the lock is lifted."""
    bucket = f"locked-{time.monotonic_ns()}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    config = s3_config(bucket, moto.url, spool_dir=str(tmp_path / "spool"))
    server = start_server("server", **merge(merge(config, TOKENS), {"retention": {
        "sweep_interval": 0.2, "retry_interval": 0.5, "rules": [{"keep": 1}]}}))
    stored = upload(server, "call-l", "rid-l")
    [key] = recordings(s3, bucket)
    s3.put_object_legal_hold(Bucket=bucket, Key=key, LegalHold={"Status": "ON"})
    wait_for(lambda: server.events("recording.delete_refused"))
    current = record(server, stored["id"])
    assert current["status"] == "completed"
    assert current["deletion_error"].startswith("object_locked")
    status, refused = api(server, "DELETE", f"/v1/recordings/{stored['id']}")
    assert (status, refused["error"]) == (409, "object_locked")
    s3.put_object_legal_hold(Bucket=bucket, Key=key, LegalHold={"Status": "OFF"})
    wait_for(lambda: record(server, stored["id"])["status"] == "deleted")
    versions = s3.list_object_versions(Bucket=bucket)
    assert not versions.get("Versions")
    assert not versions.get("DeleteMarkers")


@pytest.fixture
def two_on_postgres(start_server: Callable[..., RunningServer], pg_dsn: str, moto: MotoServer,
                    bucket: str, tmp_path: Path) -> Callable[..., list[RunningServer]]:
    """``two_on_postgres(**sections)``: instances a and b on the test's PostgreSQL database
    and bucket (stopped by pid at the end)."""

    def start(**sections: Any) -> list[RunningServer]:
        servers = []
        for name in "ab":
            config = merge(s3_config(bucket, moto.url, spool_dir=str(tmp_path / name / "spool")),
                           merge(TOKENS, {"catalog": {"url": pg_dsn}}))
            servers.append(start_server(name, **merge(config, sections)))
        return servers

    return start


def test_two_instances_on_postgres_never_delete_one_recording_twice(
        two_on_postgres: Callable[..., list[RunningServer]], s3: S3Client,
        bucket: str) -> None:
    """Two instances sweeping one PostgreSQL catalog (keep = 1 s for one account, kept for
    ever otherwise) delete each expired recording exactly once between them (each
    recording.deleted logged once), and the bucket then holds exactly the objects of the
    catalog's completed records."""
    servers = two_on_postgres(retention={"sweep_interval": 0.1, "rules": [
        {"account_id": ACCOUNT_A, "keep": 1}]})
    expiring = [upload(servers[n % 2], f"race-{n}", f"rid-race-{n}", tone=200 + n)
                for n in range(24)]
    kept = [upload(servers[n % 2], f"kept-{n}", f"rid-kept-{n}", account=ACCOUNT_B,
                   tone=900 + n) for n in range(3)]
    wait_for(lambda: len(recordings(s3, bucket)) == 3, timeout=60)
    ids = [e["id"] for s in servers for e in s.events("recording.deleted")]
    assert sorted(ids) == sorted(r["id"] for r in expiring)
    status, listed = api(servers[0], "GET", "/v1/recordings?status=completed&limit=1000")
    assert status == 200
    completed = listed["recordings"]
    assert sorted(r["id"] for r in completed) == sorted(r["id"] for r in kept)
    keys = {r["storage_url"].split(f"s3://{bucket}/", 1)[1] for r in completed}
    assert keys == set(recordings(s3, bucket))
    status, listed = api(servers[1], "GET", "/v1/recordings?status=deleted&limit=1000")
    assert len(listed["recordings"]) == 24
