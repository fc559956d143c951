"""The S3 test infrastructure itself: moto server, TcpProxy fault injection, boto3 helpers."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
from botocore.exceptions import BotoCoreError, EndpointConnectionError, ReadTimeoutError

from tests.s3support import (
    MotoServer,
    S3Client,
    TcpProxy,
    all_objects,
    head_metadata,
    list_multipart_uploads,
    moto_endpoint,
    object_sha256,
    s3_client,
)

# The fixtures moto, s3, bucket and s3_proxy come from tests/s3_fixtures.py via conftest.py.

MiB = 1 << 20


def fast_fail_client(url: str, read_timeout: float = 5) -> S3Client:
    """A client that gives up after one attempt and a 1 s connect timeout."""
    return s3_client(
        url,
        connect_timeout=1,
        read_timeout=read_timeout,
        retries={"mode": "standard", "total_max_attempts": 1},
    )


def refused(port: int) -> bool:
    """Whether a TCP connect to 127.0.0.1:port is refused."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_moto_round_trip(moto: MotoServer, s3: S3Client, bucket: str) -> None:
    """moto listens on loopback and a bucket round-trips an object, its metadata and uploads."""
    assert moto.url.startswith("http://127.0.0.1:")
    if moto.pid is not None:
        assert (moto.rss_kib() or 0) > 10_000
    body = b"hello recording" * 1000
    s3.put_object(Bucket=bucket, Key="a/b.mp3", Body=body, Metadata={"call-id": "c1"})
    upload = s3.create_multipart_upload(Bucket=bucket, Key="a/pending")
    assert s3.get_object(Bucket=bucket, Key="a/b.mp3")["Body"].read() == body
    assert object_sha256(s3, bucket, "a/b.mp3") == hashlib.sha256(body).hexdigest()
    assert head_metadata(s3, bucket, "a/b.mp3") == {"call-id": "c1"}
    assert all_objects(s3, bucket, prefix="a/") == {"a/b.mp3": len(body)}
    assert [u["UploadId"] for u in list_multipart_uploads(s3, bucket)] == [upload["UploadId"]]


def test_moto_endpoint_honours_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """With S3_ENDPOINT_URL set, moto_endpoint() yields it and starts nothing."""
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1/")
    with moto_endpoint() as url:
        assert url == "http://127.0.0.1:1"


def test_proxy_forwards_large_bodies(s3_proxy: TcpProxy, s3: S3Client, bucket: str) -> None:
    """A 50 MiB put_object and get_object through the proxy are byte-identical."""
    body = os.urandom(50 * MiB)
    via_proxy = s3_client(s3_proxy.url)
    via_proxy.put_object(Bucket=bucket, Key="big", Body=body)
    assert all_objects(s3, bucket) == {"big": len(body)}
    assert object_sha256(via_proxy, bucket, "big") == hashlib.sha256(body).hexdigest()
    via_proxy.close()


def test_proxy_half_close(s3_proxy: TcpProxy) -> None:
    """A client's FIN is passed upstream while the response still flows back to it."""
    with socket.create_connection(("127.0.0.1", s3_proxy.port), timeout=5) as sock:
        sock.sendall(b"GET /moto-api/ HTTP/1.0\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        response = b"".join(iter(lambda: sock.recv(65536), b""))
    assert response.split(b"\r\n", 1)[0].split()[1] == b"200"


def test_proxy_down_refuses_and_cuts(s3_proxy: TcpProxy, s3: S3Client, bucket: str) -> None:
    """down() cuts an in-flight download and makes new requests fail fast with refusal."""
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(32 * MiB))
    client = fast_fail_client(s3_proxy.url)
    body = client.get_object(Bucket=bucket, Key="big")["Body"]
    assert len(body.read(MiB)) == MiB
    s3_proxy.down()
    assert not s3_proxy.is_up
    with pytest.raises(BotoCoreError):
        body.read()
    assert refused(s3_proxy.port)
    started = time.monotonic()
    with pytest.raises(EndpointConnectionError):
        client.head_bucket(Bucket=bucket)
    assert time.monotonic() - started < 1
    client.close()


def test_proxy_up_again_same_port(s3_proxy: TcpProxy, bucket: str) -> None:
    """After down() then up(), requests work again on the same port."""
    port, client = s3_proxy.port, fast_fail_client(s3_proxy.url)
    client.head_bucket(Bucket=bucket)
    s3_proxy.down()
    s3_proxy.up()
    assert s3_proxy.is_up
    assert s3_proxy.port == port
    client.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    client.close()


def test_proxy_stall_hangs_until_up(s3_proxy: TcpProxy, bucket: str) -> None:
    """stall() makes requests time out instead of failing; up() makes them work again."""
    client = fast_fail_client(s3_proxy.url, read_timeout=0.5)
    s3_proxy.stall()
    assert not s3_proxy.is_up
    assert not refused(s3_proxy.port)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        client.head_bucket(Bucket=bucket)
    assert 0.4 < time.monotonic() - started < 2
    s3_proxy.up()
    client.head_bucket(Bucket=bucket)
    client.close()


def test_proxy_close_leaves_nothing(moto: MotoServer, bucket: str) -> None:
    """close() joins the proxy thread, closes every socket it opened and frees its port."""
    fds_before = len(os.listdir("/proc/self/fd"))
    proxy = TcpProxy((moto.host, moto.port)).start()
    client = s3_client(proxy.url)
    client.put_object(Bucket=bucket, Key="k", Body=b"v")  # leaves a pooled keep-alive connection
    proxy.close()
    proxy.close()
    client.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("TcpProxy")]
    assert len(os.listdir("/proc/self/fd")) <= fds_before
    assert refused(proxy.port)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", proxy.port))
        sock.listen()


def test_moto_server_log(moto: MotoServer) -> None:
    """The server's output goes to a log file, not a pipe."""
    if moto.log_path is None:
        pytest.skip("attached to $S3_ENDPOINT_URL")
    assert moto.log_path.is_file()
