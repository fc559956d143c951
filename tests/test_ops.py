"""The operations surface against real ``recsink serve`` processes: where ``ops.listen`` may
listen, who may read /readyz and /metrics and what /readyz tells them, readiness that proves
the catalog takes a write, keys too long for a filesystem, and the start-up look for an S3
bucket."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import tomli_w

from recsink.storage.keys import render_key
from tests.conftest import (
    RunningServer,
    base_config,
    exchange,
    fill,
    kazoo_put,
    make_wav,
    merge,
    stored_files,
    wait_for,
)
from tests.s3support import MotoServer, s3_config

TOKEN = "ops-test-upload-token"
#: The longest file name most filesystems take, in bytes.
NAME_MAX = 255


def get(port: int, path: str, authorization: str | None = None) -> Any:
    auth = f"authorization: {authorization}\r\n" if authorization else ""
    return exchange(port, f"GET {path} HTTP/1.1\r\nhost: x\r\n{auth}\r\n".encode())


def run_cli(tmp_path: Path, command: str,
            config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "recsink.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "recsink", command, "--config", str(path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


# -- item 6: ops.listen apart from the main listener ----------------------------------------

@pytest.mark.parametrize("listen", ["0.0.0.0:18080", "[::1]:18080", "127.0.0.1:18080",
                                    "127.0.0.2:18080"])
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_ops_listen_on_the_main_port_is_refused(tmp_path: Path, listen: str,
                                                command: str) -> None:
    """``ops.listen`` on the main listener's port, whatever its address, is refused by
    check-config and serve (exit 2, naming ops.listen), before anything listens."""
    config = merge(base_config(tmp_path), {"server": {"port": 18080}, "ops": {"listen": listen}})
    done = run_cli(tmp_path, command, config)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "ops.listen" in done.stderr, done.stderr
    assert "18080" in done.stderr, done.stderr


def test_ops_listen_on_another_port_or_port_zero_is_accepted(tmp_path: Path) -> None:
    """``ops.listen`` on another port, or on port 0 beside a fixed main port, passes
    check-config."""
    for listen in ("0.0.0.0:18081", "127.0.0.1:0"):
        config = merge(base_config(tmp_path), {"server": {"port": 18080},
                                               "ops": {"listen": listen}})
        done = run_cli(tmp_path, "check-config", config)
        assert done.returncode == 0, done.stderr


# -- item 6: who may read /readyz and /metrics ----------------------------------------------

def test_ops_routes_need_an_upload_credential_once_auth_has_one(
    start_server: Callable[..., RunningServer],
) -> None:
    """With upload credentials configured and no ops.token, /readyz and /metrics answer 401
    without one of them and 200 with any (bearer, Basic, query token); /healthz stays open
    and says only "ok"."""
    server = start_server(auth={"bearer_tokens": [TOKEN], "url_tokens": ["q-" + TOKEN],
                                "basic": [{"username": "pbx", "password": "pw-" + TOKEN}]})
    basic = "Basic " + base64.b64encode(f"pbx:pw-{TOKEN}".encode()).decode()
    for path in ("/readyz", "/metrics"):
        assert get(server.port, path).status == 401
        assert get(server.port, path, "Bearer wrong").status == 401
        assert get(server.port, path, f"Bearer {TOKEN}").status == 200
        assert get(server.port, path, basic).status == 200
        assert get(server.port, f"{path}?token={quote('q-' + TOKEN)}").status == 200
    health = get(server.port, "/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})


def test_ops_routes_on_a_loopback_ops_address_stay_open(
    start_server: Callable[..., RunningServer],
) -> None:
    """With credentials configured, /readyz and /metrics on a loopback ``ops.listen`` answer
    without one (only local processes reach that address)."""
    server = start_server(auth={"bearer_tokens": [TOKEN]}, ops={"listen": "127.0.0.1:0"})
    [listening] = server.events("server.listening")
    assert get(listening["ops_port"], "/readyz").status == 200
    assert get(listening["ops_port"], "/metrics").status == 200


# -- items 6 and 9: /readyz checks the catalog and tells only the trusted why ------------------

def test_readyz_fails_when_the_catalog_file_is_deleted_and_hides_why_from_strangers(
    start_server: Callable[..., RunningServer],
) -> None:
    """Deleting the SQLite catalog under a running server makes /readyz 503; a caller
    without a credential reads no path and no error text (the log's ``ready.unavailable``
    line has them), one with a credential reads why."""
    server = start_server(auth={"bearer_tokens": [TOKEN]}, ops={"listen": "127.0.0.1:0"})
    [listening] = server.events("server.listening")
    ops = listening["ops_port"]
    assert get(ops, "/readyz").status == 200
    catalog = Path(server.config["catalog"]["path"])
    catalog.unlink()
    stranger = get(ops, "/readyz")
    assert stranger.status == 503, stranger.body
    assert list(stranger.json()["problems"]) == ["catalog"]
    assert str(server.workdir).encode() not in stranger.body
    assert b"recsink.db" not in stranger.body
    trusted = get(ops, "/readyz", f"Bearer {TOKEN}")
    assert trusted.status == 503
    assert "recsink.db" in trusted.json()["problems"]["catalog"]
    [logged, *_] = wait_for(lambda: server.events("ready.unavailable"))
    assert "recsink.db" in logged["problems"]["catalog"]


def test_readyz_fails_while_the_catalog_cannot_be_written(
    start_server: Callable[..., RunningServer], tmpfs: Callable[..., Path],
) -> None:
    """With the catalog's file system full (storage elsewhere, still writable), /readyz
    answers 503 naming the catalog; once there is room again, 200."""
    mountpoint = tmpfs("4m", "catalog")
    server = start_server(catalog={"path": str(mountpoint / "recsink.db")})
    assert get(server.port, "/readyz").status == 200
    filler = mountpoint / "filler"
    with pytest.raises(OSError, match="No space left"):
        fill(filler)
    ready = get(server.port, "/readyz")
    assert ready.status == 503, ready.body
    assert list(ready.json()["problems"]) == ["catalog"]
    filler.unlink()
    assert get(server.port, "/readyz").status == 200


# -- item 8: keys longer than a file name may be --------------------------------------------

LONG_TEMPLATE = "{account_id}/{call_id}_{recording_id}_{owner_id}.{ext}"


def test_long_keys_are_shortened_and_uploads_stored_once(
    start_server: Callable[..., RunningServer],
) -> None:
    """A template joining long values in one segment stores the upload (201) under segments
    of at most NAME_MAX bytes; the retry is a duplicate (200) of the same key, and the
    same values give the same key."""
    server = start_server(storage={"key_template": LONG_TEMPLATE})
    call_id, recording_id = "c" * 200 + "@pbx.example.com", "r" * 200
    target = (f"/kazoo/call_recording_{call_id}.wav?call_id={call_id}"
              f"&recording_id={recording_id}&owner_id={'o' * 120}")
    body = make_wav(0.5)
    first = exchange(server.port, kazoo_put(target, len(body)) + body)
    assert first.status == 201, first.body
    again = exchange(server.port, kazoo_put(target, len(body)) + body)
    assert again.status == 200, again.body
    assert again.json()["storage_url"] == first.json()["storage_url"]
    [stored] = stored_files(server.root)
    assert stored.read_bytes() == body
    parts = stored.relative_to(server.root).parts
    assert all(len(p.encode()) <= NAME_MAX for p in parts), parts
    assert stored.name.endswith(".wav")


def test_render_key_shortens_deterministically_at_character_boundaries() -> None:
    """render_key gives the same short key for the same values, distinct keys for values
    that differ only past the cut, segments of at most NAME_MAX bytes cut between
    UTF-8 characters (the template's own text may be non-ASCII), and keys within S3's
    limit."""
    from datetime import UTC, datetime

    when = datetime(2026, 1, 2, tzinfo=UTC)
    template = "é" * 90 + "{call_id}{recording_id}.{ext}"
    values = {"call_id": "a" * 120, "recording_id": "b" * 120, "ext": "wav"}
    key = render_key(template, values, when)
    assert key == render_key(template, values, when)
    assert len(key.encode()) <= NAME_MAX
    assert key.endswith(".wav")
    key.encode().decode("utf-8")  # whole characters only
    other = render_key(template, {**values, "recording_id": "b" * 119 + "c"}, when)
    assert other != key
    deep = "/".join(["{call_id}{recording_id}"] * 12) + "/{id}.{ext}"
    long_key = render_key(deep, {**values, "id": "x"}, when)
    assert len(long_key.encode()) <= 1024 - 100
    assert long_key == render_key(deep, {**values, "id": "x"}, when)


# -- item 14: a missing bucket is named at start -------------------------------------------

def test_missing_bucket_is_warned_about_at_start(
    start_server: Callable[..., RunningServer], moto: MotoServer, bucket: str, tmp_path: Path,
) -> None:
    """``recsink serve`` on S3 logs ``storage.bucket_missing`` naming the bucket when it does
    not exist, and no such warning when it does."""
    missing = f"{bucket}-missing"
    server = start_server("missing", **s3_config(
        missing, moto.url, spool_dir=str(tmp_path / "missing" / "spool")))
    [warning] = wait_for(lambda: server.events("storage.bucket_missing"))
    assert warning["bucket"] == missing
    assert warning["level"] == "warning"
    present = start_server("present", **s3_config(
        bucket, moto.url, spool_dir=str(tmp_path / "present" / "spool")))
    assert present.events("storage.ready")
    assert present.events("storage.bucket_missing") == []
