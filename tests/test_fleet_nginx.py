"""The README's nginx block (after ``<!-- nginx-fleet -->``), run as written with Debian's
nginx over TLS in front of a two-instance fleet: only the upstream addresses, the listen
address and the certificate paths are changed. Kazoo's request line with a raw UTF-8 caller
name reaches recsink and is stored once, and bodies are streamed, not buffered."""

from __future__ import annotations

import datetime
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO,
    Reply,
    RunningServer,
    api_get,
    kazoo_put,
    make_wav,
    path_a,
    wav_stream,
)
from tests.s3support import S3Client, list_multipart_uploads, recordings
from tests.test_fleet import Fleet, fleet  # noqa: F401  (fixture)

MiB = 1024 * 1024
MARKER = "<!-- nginx-fleet -->"


def readme_nginx_block() -> str:
    """The nginx block of README.md: between the ```nginx fence after the marker and its
    closing fence."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md has no single {MARKER}"
    found = re.match(r"\s*```nginx\n(.*?\n)```\n", text.split(MARKER, 1)[1], re.S)
    assert found, f"no ```nginx block right after {MARKER} in README.md"
    return found.group(1)


def adapt(block: str, upstreams: list[int], port: int, cert: Path, key: Path) -> str:
    """The block with only what a test must change: the two upstream servers, the listen
    address and the certificate paths."""
    servers = re.findall(r"server 10\.0\.0\.\d+:8080;", block)
    assert len(servers) == len(upstreams), servers
    for server, upstream in zip(servers, upstreams, strict=True):
        block = block.replace(server, f"server 127.0.0.1:{upstream};", 1)
    assert block.count("listen 443 ssl;") == 1
    block = block.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    paths = {"ssl_certificate": cert, "ssl_certificate_key": key}
    block, n = re.subn(r"\b(ssl_certificate(?:_key)?)(\s+)\S+;",
                       lambda m: f"{m[1]}{m[2]}{paths[m[1]]};", block)
    assert n == 2, block
    return block


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body_temp;
    proxy_temp_path {dir}/proxy_temp;
    fastcgi_temp_path {dir}/fastcgi_temp;
    uwsgi_temp_path {dir}/uwsgi_temp;
    scgi_temp_path {dir}/scgi_temp;
{block}}}
"""


def nginx_binary() -> str:
    """Debian's nginx (``/usr/sbin`` is not on every PATH); skips without it, fails in CI."""
    exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK)
                                    else None)
    if exe is None:
        reason = "nginx is not installed (apt-get install nginx; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return exe


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for rec.example.com and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rec.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("rec.example.com")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "rec.pem", directory / "rec.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(predicate: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """``predicate()`` once it is truthy, polled until ``timeout`` (then fails naming it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {what}")
        time.sleep(0.05)


@dataclass
class Nginx:
    """Debian's nginx in front of the fleet, from the README's block."""

    proc: subprocess.Popen[bytes]
    port: int
    directory: Path
    servers: list[RunningServer]

    def log(self) -> str:
        return logs(self.directory)

    def connect(self) -> ssl.SSLSocket:
        """A TLS 1.2 connection (Kazoo 4.3's most), the certificate not verified."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        return context.wrap_socket(sock, server_hostname="rec.example.com")

    def exchange(self, request: bytes) -> Reply:
        """Send ``request`` byte for byte over a new TLS connection; read one response."""
        with self.connect() as sock:
            sock.sendall(request)
            return read_reply(sock, request.split(b" ", 1)[0].decode())


def logs(directory: Path) -> str:
    """nginx's stderr and error log."""
    return "".join(p.read_text(errors="replace") for p in (
        directory / "stderr.log", directory / "error.log") if p.exists())


def read_reply(sock: socket.socket, method: str) -> Reply:
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def start_nginx(exe: str, directory: Path,
                block: Callable[[int], str]) -> tuple[subprocess.Popen[bytes], int]:
    """nginx (not a daemon, its own pid) on a free loopback port, once it accepts
    connections; another port if it lost the race for the first."""
    for name in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
        (directory / name).mkdir(parents=True, exist_ok=True)
    # As root, workers would run as nobody, who cannot enter pytest's 0700 directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    for _ in range(3):
        port = free_port()
        conf = directory / "nginx.conf"
        conf.write_text(NGINX_CONF.format(user=user, dir=directory, block=block(port)),
                        encoding="utf-8")
        with (directory / "stderr.log").open("wb") as err:
            proc = subprocess.Popen([exe, "-c", str(conf), "-p", str(directory)],
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return proc, port
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:  # running, yet not accepting connections
            stop(proc)
            break
        if "Address already in use" not in logs(directory):
            break
    raise AssertionError(f"nginx did not start ({conf}):\n{logs(directory)}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGQUIT (graceful shutdown) to the master by its pid, then wait; SIGKILL if stuck."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGQUIT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def nginx_exe() -> str:
    """Debian's nginx binary; skips (fails in CI) before anything else is set up."""
    return nginx_binary()


@pytest.fixture
def nginx_fleet(nginx_exe: str, fleet: Fleet, tmp_path: Path) -> Iterator[Nginx]:  # noqa: F811
    """Two recsink instances behind nginx running the README's block."""
    readme = readme_nginx_block()
    servers = fleet(2)
    directory = tmp_path / "nginx"
    directory.mkdir()
    cert, key = self_signed(directory)
    upstreams = [s.port for s in servers]
    proc, port = start_nginx(nginx_exe, directory,
                             lambda p: adapt(readme, upstreams, p, cert, key))
    try:
        yield Nginx(proc, port, directory, servers)
    finally:
        stop(proc)


def uploads_seen(server: RunningServer, call_id: str) -> int:
    """How many uploads of ``call_id`` ``server`` answered (stored or duplicate)."""
    return sum(1 for event in ("recording.stored", "recording.duplicate")
               for line in server.events(event) if line.get("call_id") == call_id)


def test_raw_utf8_request_line_passes_through_to_either_instance_and_stores_once(
    nginx_fleet: Nginx, s3: S3Client, bucket: str,
) -> None:
    """README nginx: raw-UTF-8 Kazoo PUT is 201 then 200 on either instance, José, one object."""
    body = make_wav(1.0)
    call_id = "via-nginx"
    target = path_a(call_id, "202611-" + "a" * 32) + "&caller_id_name=José"
    request = kazoo_put(target, len(body)) + body
    assert b"&caller_id_name=Jos\xc3\xa9 HTTP/1.1\r\n" in request  # raw bytes, not %C3%A9
    first = nginx_fleet.exchange(request)
    assert first.status == 201, (first.body, nginx_fleet.log())
    assert first.json()["metadata"]["caller_id_name"] == "José"
    for _ in range(3):
        again = nginx_fleet.exchange(request)
        assert again.status == 200, (again.body, nginx_fleet.log())
        assert again.json()["id"] == first.json()["id"]
    a, b = nginx_fleet.servers
    # nginx's round robin spread the four PUTs over both instances.
    assert uploads_seen(a, call_id) >= 1
    assert uploads_seen(b, call_id) >= 1
    assert uploads_seen(a, call_id) + uploads_seen(b, call_id) == 4
    for server in nginx_fleet.servers:
        [record] = api_get(server, f"/v1/recordings?call_id={call_id}")["recordings"]
        assert record["status"] == "completed"
        assert record["metadata"]["caller_id_name"] == "José"
    assert len(recordings(s3, bucket)) == 1


def test_body_is_streamed_through_nginx_not_buffered(
    nginx_fleet: Nginx, s3: S3Client, bucket: str,
) -> None:
    """README nginx streams a 20 MiB body: recsink is uploading it before it has all arrived."""
    size = 20 * MiB
    body = b"".join(wav_stream(size, seed=20))
    call_id = "streamed-via-nginx"
    target = path_a(call_id, "202611-" + "b" * 32)
    with nginx_fleet.connect() as sock:
        sock.sendall(kazoo_put(target, size) + body[:size // 2])

        def uploading() -> list[dict[str, Any]]:
            return [r for server in nginx_fleet.servers
                    for r in api_get(server, f"/v1/recordings?call_id={call_id}")["recordings"]
                    if r["status"] == "uploading"]

        poll(uploading, "recsink lists the upload as uploading with half the body sent "
                        "(nginx buffers the body?)")
        poll(lambda: list_multipart_uploads(s3, bucket),
             "a multipart upload is open with half the body sent (nginx buffers the body?)")
        assert recordings(s3, bucket) == {}
        sock.sendall(body[size // 2:])
        reply = read_reply(sock, "PUT")
    assert reply.status == 201, (reply.body, nginx_fleet.log())
    assert reply.json()["byte_size"] == size
    [key] = recordings(s3, bucket)
    assert recordings(s3, bucket)[key] == size
    assert list_multipart_uploads(s3, bucket) == []
