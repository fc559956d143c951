"""S3 wire level: destinations, the aiobotocore client, error classification, metadata.

Used by :mod:`recsink.storage.s3`, :mod:`recsink.fetch` (bucket pulls) and
:mod:`recsink.reindex`. Client settings follow specs/s3.md §5: ``request_checksum_calculation``
configurable (default ``when_required``, which third-party stores accept), path-style
addressing, standard retries with backoff on throttling and 5xx, ``storage.s3.max_attempts``
attempts in all (botocore's ``total_max_attempts``: its ``max_attempts`` counts retries only,
so 5 meant 6 attempts and 1 could not say "no retries").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from recsink.audio import media_type_for
from recsink.config import S3Settings
from recsink.storage import StorageError, StorageUnavailable

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

#: Where recsink 0.1 kept its own objects in the bucket (claims), below the prefix; listings
#: of recordings still leave it out.
INTERNAL_PREFIX = ".recsink"
GCS_ENDPOINT = "https://storage.googleapis.com"


@dataclass(frozen=True)
class Destination:
    """A bucket and key prefix from ``s3://bucket/prefix`` or ``gs://bucket/prefix``."""

    scheme: str
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> Destination:
        scheme, _, rest = url.partition("://")
        bucket, _, prefix = rest.partition("/")
        return cls(scheme, bucket, prefix.strip("/"))

    def object_key(self, key: str) -> str:
        """The bucket key for a storage key."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def storage_key(self, object_key: str) -> str:
        """The storage key of a bucket key below the prefix."""
        return object_key[len(self.prefix) + 1:] if self.prefix else object_key

    def url(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{self.object_key(key)}"


def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """``x-amz-meta-*`` values must be ASCII: percent-encode the rest; drop empty values."""
    return {k: quote(str(v), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~") for k, v in meta.items()
            if v is not None and v != ""}


def decode_metadata(meta: Mapping[str, str]) -> dict[str, str]:
    return {k: unquote(v) for k, v in meta.items()}


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (``PreconditionFailed``, ``404``…), else ""."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def http_status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return 0


def is_conflict(exc: BaseException) -> bool:
    """A conditional write lost: 412 PreconditionFailed or 409 ConditionalRequestConflict."""
    return http_status(exc) in (409, 412) or error_code(exc) in (
        "PreconditionFailed", "ConditionalRequestConflict")


def is_missing(exc: BaseException) -> bool:
    return http_status(exc) == 404 or error_code(exc) in ("404", "NoSuchKey", "NotFound")


def is_unreachable(exc: BaseException) -> bool:
    """S3 did not answer, or answered 5xx after botocore's retries: worth spooling."""
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError
                  | ConnectionClosedError | aiohttp.ClientConnectionError | ConnectionError
                  | asyncio.TimeoutError):
        return True
    return http_status(exc) >= 500


class Unreachable(StorageUnavailable):
    """S3 did not answer (or kept answering 5xx)."""


def as_storage_error(exc: BaseException, what: str) -> StorageError:
    if is_unreachable(exc):
        return Unreachable(f"S3 {what}: {exc}")
    return StorageUnavailable(f"S3 {what}: {exc}")


def content_type(key: str) -> str:
    """The Content-Type stored with an object, from its extension."""
    return media_type_for(key.rpartition(".")[2]) or "application/octet-stream"


#: What an S3 call can raise.
S3_ERRORS = (BotoCoreError, ClientError, OSError, asyncio.TimeoutError)


def _gcs_headers(request: Any, **_: Any) -> None:
    """before-sign hook for gs://: Google Cloud Storage's XML API takes a generation
    precondition where S3 takes ``If-None-Match: *``: ``x-goog-if-generation-match: 0``."""
    headers = request.headers
    if headers.get("If-None-Match") == "*":
        del headers["If-None-Match"]
        headers["x-goog-if-generation-match"] = "0"


@asynccontextmanager
async def open_client(settings: S3Settings) -> AsyncIterator[S3Client]:
    """One aiobotocore S3 client for the application (use it in ``cleanup_ctx``)."""
    destination = Destination.parse(settings.url)
    access_key = secret_key = None
    region = settings.region
    credentials = settings.credentials.get_secret_value()
    if credentials:
        access_key, secret_key, region = credentials.split(":")
    endpoint = settings.endpoint_url or (GCS_ENDPOINT if destination.scheme == "gs" else None)
    config = AioConfig(
        request_checksum_calculation=settings.request_checksum_calculation,
        response_checksum_validation=settings.request_checksum_calculation,
        s3={"addressing_style": settings.addressing_style},
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        max_pool_connections=64,
    )
    session = get_session()
    async with session.create_client(
        "s3", endpoint_url=endpoint,
        region_name=region or ("auto" if destination.scheme == "gs" else "us-east-1"),
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config,
    ) as client:
        if destination.scheme == "gs":
            client.meta.events.register("before-sign.s3", _gcs_headers)
        yield client
