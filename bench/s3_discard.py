"""A discard-everything S3 stand-in, to see recsink's own ceiling when S3 costs nothing.

An aiohttp app in its own process (``python -m bench.s3_discard``; it prints
``{"port": N}`` once listening on 127.0.0.1) answering the S3 calls recsink makes
(recsink/storage/s3.py, s3client.py) and the plain aiobotocore anchor makes, path-style:

* ``PUT /<bucket>`` (create), ``HEAD /<bucket>``, ``GET /<bucket>?uploads``
  (ListMultipartUploads);
* ``PutObject`` (honouring ``If-None-Match: *`` and ``If-Match``), ``HeadObject``
  (recsink looks for a free key before each upload), ``GetObject`` of a small object,
  ``DeleteObject``;
* ``CreateMultipartUpload`` (its ``x-amz-meta-*`` become the object's metadata),
  ``UploadPart``, ``CompleteMultipartUpload`` (with ``If-None-Match: *``),
  ``AbortMultipartUpload``.

recsink makes no CopyObject: one answers 501, so that a copy would fail the row instead of
passing for a PutObject.

It keeps only what it needs: for every object its size, metadata and ETag, which is the MD5
S3 computes; a multipart object's ETag is the MD5 of its parts' MD5s and ``-<parts>``, so
the harness can check every stored object against the source file cut at the same part
size (and recsink's catalog holds the sha256). The bytes of objects up to
:data:`KEEP_BYTES` are kept too, for GetObject; everything else is discarded.
``GET /_standin/objects`` lists the objects as JSON and ``POST /_standin/reset`` forgets
them all (harness only). Signatures are not checked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from bench.common import HOST, stop_process

#: Objects up to this size keep their bytes (GetObject answers 501 for larger ones).
KEEP_BYTES = 64 * 1024
XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_PART = re.compile(rb"<PartNumber>(\d+)</PartNumber>")


@dataclass
class Obj:
    size: int
    etag: str  # unquoted
    content_type: str
    metadata: dict[str, str]
    modified: float
    data: bytes | None = None


@dataclass
class Upload:
    key: str
    content_type: str
    metadata: dict[str, str]
    parts: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # number -> size, md5


@dataclass
class State:
    buckets: set[str] = field(default_factory=set)
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)


STATE = web.AppKey("state", State)


def _error(status: int, code: str, message: str, **extra: str) -> web.Response:
    fields = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in extra.items())
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message>{fields}"
            f"<RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>")
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


def _xml(body: str) -> web.Response:
    return web.Response(body=('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode(),
                        content_type="application/xml")


def _metadata(request: web.Request) -> dict[str, str]:
    return {k[len("x-amz-meta-"):]: v for k, v in request.headers.items()
            if k.lower().startswith("x-amz-meta-")}


def _object_headers(obj: Obj) -> dict[str, str]:
    headers = {"ETag": f'"{obj.etag}"', "Last-Modified": formatdate(obj.modified, usegmt=True),
               "Content-Type": obj.content_type, "Accept-Ranges": "bytes"}
    headers.update({f"x-amz-meta-{k}": v for k, v in obj.metadata.items()})
    return headers


async def _digest(request: web.Request) -> tuple[int, str, bytes | None]:
    """Read the body: its size, hex MD5, and the bytes when small enough to keep."""
    if request.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
        raise web.HTTPNotImplemented(text="aws-chunked bodies are not supported")
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    kept: bytearray | None = bytearray()
    async for chunk in request.content.iter_any():
        md5.update(chunk)
        size += len(chunk)
        if kept is not None:
            kept += chunk
            if len(kept) > KEEP_BYTES:
                kept = None
    return size, md5.hexdigest(), bytes(kept) if kept is not None else None


def _precondition(request: web.Request, existing: Obj | None) -> web.Response | None:
    if request.headers.get("If-None-Match") == "*" and existing is not None:
        return _error(412, "PreconditionFailed", "At least one of the pre-conditions you "
                      "specified did not hold", Condition="If-None-Match")
    if_match = request.headers.get("If-Match")
    if if_match is not None and (existing is None or if_match.strip('"') != existing.etag):
        if existing is None:
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        return _error(412, "PreconditionFailed", "At least one of the pre-conditions you "
                      "specified did not hold", Condition="If-Match")
    return None


async def bucket_route(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    bucket = request.match_info["bucket"]
    if request.method == "PUT":
        await request.read()
        state.buckets.add(bucket)
        return web.Response(headers={"Location": f"/{bucket}"})
    if bucket not in state.buckets:
        return _error(404, "NoSuchBucket", "The specified bucket does not exist",
                      BucketName=bucket)
    if request.method == "HEAD":
        return web.Response()
    if request.method == "GET" and "uploads" in request.query:
        items = "".join(f"<Upload><Key>{escape(u.key)}</Key><UploadId>{uid}</UploadId></Upload>"
                        for uid, u in state.uploads.items())
        return _xml(f'<ListMultipartUploadsResult xmlns="{XMLNS}"><Bucket>{bucket}</Bucket>'
                    f"<IsTruncated>false</IsTruncated>{items}</ListMultipartUploadsResult>")
    return _error(501, "NotImplemented", f"{request.method} {request.path_qs}")


async def object_route(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    bucket, key = request.match_info["bucket"], request.match_info["key"]
    if bucket not in state.buckets:
        await request.read()
        return _error(404, "NoSuchBucket", "The specified bucket does not exist",
                      BucketName=bucket)
    query = request.query
    existing = state.objects.get((bucket, key))
    method = request.method

    if method == "PUT" and "uploadId" in query:  # UploadPart
        upload = state.uploads.get(query["uploadId"])
        if upload is None:
            await request.read()
            return _error(404, "NoSuchUpload", "The specified upload does not exist.")
        size, md5, _ = await _digest(request)
        upload.parts[int(query["partNumber"])] = (size, bytes.fromhex(md5))
        return web.Response(headers={"ETag": f'"{md5}"'})

    if method == "PUT" and "x-amz-copy-source" in request.headers:  # CopyObject
        await request.read()
        return _error(501, "NotImplemented", "this stand-in makes no copies (recsink makes "
                      "none: sha256 and duration live in its catalog)")

    if method == "PUT":  # PutObject
        refused = _precondition(request, existing)
        if refused is not None:
            await request.read()
            return refused
        size, md5, data = await _digest(request)
        state.objects[(bucket, key)] = Obj(
            size, md5, request.headers.get("Content-Type", "binary/octet-stream"),
            _metadata(request), time.time(), data)
        return web.Response(headers={"ETag": f'"{md5}"'})

    if method == "POST" and "uploads" in query:  # CreateMultipartUpload
        await request.read()
        upload_id = uuid.uuid4().hex
        state.uploads[upload_id] = Upload(
            key, request.headers.get("Content-Type", "binary/octet-stream"), _metadata(request))
        return _xml(f'<InitiateMultipartUploadResult xmlns="{XMLNS}"><Bucket>{bucket}</Bucket>'
                    f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                    "</InitiateMultipartUploadResult>")

    if method == "POST" and "uploadId" in query:  # CompleteMultipartUpload
        listing = await request.read()
        upload = state.uploads.get(query["uploadId"])
        if upload is None:
            return _error(404, "NoSuchUpload", "The specified upload does not exist.")
        refused = _precondition(request, existing)
        if refused is not None:
            return refused
        numbers = [int(n) for n in _PART.findall(listing)]
        if not numbers or any(n not in upload.parts for n in numbers):
            return _error(400, "InvalidPart", "One or more of the specified parts could not "
                          "be found.")
        etag = (hashlib.md5(b"".join(upload.parts[n][1] for n in numbers),
                            usedforsecurity=False).hexdigest() + f"-{len(numbers)}")
        state.objects[(bucket, key)] = Obj(sum(upload.parts[n][0] for n in numbers), etag,
                                           upload.content_type, upload.metadata, time.time())
        del state.uploads[query["uploadId"]]
        return _xml(f'<CompleteMultipartUploadResult xmlns="{XMLNS}"><Location>/{bucket}/'
                    f"{escape(key)}</Location><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key>"
                    f"<ETag>&quot;{etag}&quot;</ETag></CompleteMultipartUploadResult>")

    if method == "DELETE" and "uploadId" in query:  # AbortMultipartUpload
        if state.uploads.pop(query["uploadId"], None) is None:
            return _error(404, "NoSuchUpload", "The specified upload does not exist.")
        return web.Response(status=204)

    if method == "DELETE":  # DeleteObject
        state.objects.pop((bucket, key), None)
        return web.Response(status=204)

    if method in ("GET", "HEAD"):  # GetObject, HeadObject
        if existing is None:
            if method == "HEAD":
                return web.Response(status=404)
            return _error(404, "NoSuchKey", "The specified key does not exist.", Key=key)
        headers = _object_headers(existing)
        if method == "HEAD":
            headers["Content-Length"] = str(existing.size)
            return web.Response(headers=headers)
        if existing.data is None:
            return _error(501, "NotImplemented", "this stand-in discarded the object's bytes")
        return web.Response(body=existing.data, headers=headers)

    return _error(501, "NotImplemented", f"{method} {request.path_qs}")


async def list_objects(request: web.Request) -> web.Response:
    """Harness only: every object as ``{"bucket/key": {size, etag, metadata}}``, and the
    open multipart uploads."""
    state = request.app[STATE]
    return web.json_response({
        "objects": {f"{b}/{k}": {"size": o.size, "etag": o.etag, "metadata": o.metadata}
                    for (b, k), o in state.objects.items()},
        "uploads": [f"{u.key} {uid}" for uid, u in state.uploads.items()]})


async def reset(request: web.Request) -> web.Response:
    """Harness only: forget every object and upload (buckets stay)."""
    state = request.app[STATE]
    state.objects.clear()
    state.uploads.clear()
    return web.json_response({"ok": True})


def make_app() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[STATE] = State()
    app.router.add_get("/_standin/objects", list_objects)
    app.router.add_post("/_standin/reset", reset)
    app.router.add_route("*", "/{bucket}", bucket_route)
    app.router.add_route("*", "/{bucket}/{key:.+}", object_route)
    return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None, handle_signals=True)
    await runner.setup()
    site = web.TCPSite(runner, HOST, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(json.dumps({"port": bound}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m bench.s3_discard [--port N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port))
    return 0


class DiscardS3:
    """A stand-in process started by the harness (and stopped by its pid)."""

    def __init__(self, log_path: Path, timeout: float = 30) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.s3_discard"], stdout=subprocess.PIPE,
                stderr=log, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until it listens (or exits)
        if not line:
            raise RuntimeError(f"the S3 stand-in exited: {log_path.read_text()}")
        self.port = int(json.loads(line)["port"])
        self.url = f"http://{HOST}:{self.port}"

    def _call(self, method: str, path: str) -> Any:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(self.url + path, method=method)  # noqa: S310
        with opener.open(request, timeout=60) as response:
            return json.loads(response.read())

    def create_bucket(self, bucket: str) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        opener.open(urllib.request.Request(f"{self.url}/{bucket}", method="PUT"),  # noqa: S310
                    timeout=10).read()

    def objects(self) -> dict[str, Any]:
        """``{"objects": {"bucket/key": {size, etag, metadata}}, "uploads": [...]}``."""
        listing: dict[str, Any] = self._call("GET", "/_standin/objects")
        return listing

    def reset(self) -> None:
        self._call("POST", "/_standin/reset")

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
