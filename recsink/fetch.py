"""Media pull: copies recordings a platform stored elsewhere into recsink's storage.

A callback (Sinch ``recording_available``, SignalWire ``completed``) with pulling enabled
leaves its record ``uploading`` with ``pull_state = "pending"`` and the media's location in
``pull_url``. The :class:`Fetcher` claims due pulls from the catalog, at most
``fetch.workers`` at a time, each under the record's lease (so each pull runs on one
instance of a fleet, however many received the callback), and streams each one through
:meth:`Ingestor.ingest <recsink.ingest.Ingestor.ingest>` under that lease, so a pulled
recording gets the same size cap, sniffing, hashing, storage and commit as an upload, and
its record becomes ``completed``. A failed attempt is retried after ``fetch.backoff`` seconds,
doubled each time up to ``fetch.backoff_max``; after ``fetch.max_attempts`` the record ends
``failed`` with the reason. The queue lives in the catalog, so it survives a restart, and a
crashed instance's pulls are claimed again when their leases expire.

Locations: ``https://`` and ``http://`` (a plain GET; SignalWire media needs no
authentication, specs/callbacks.md §B.5), ``s3://`` and ``gs://`` (``[[fetch.buckets]]``
credentials, else the AWS chain), ``azure://<account>/<container>/<blob>`` (``[[fetch.azure]]``
credentials, azure-storage-blob). Locations may hold secrets (SignalWire's media URLs open
without authentication), so logs show only their scheme and host.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import aiojobs

from recsink import logs
from recsink.bodies import ChunksBody, RawBody
from recsink.catalog import Status, utcnow
from recsink.commit import Commits, Held
from recsink.config import FetchAzure, FetchBucket, FetchSettings, S3Settings
from recsink.errors import RecsinkError
from recsink.ingest import Body, Ingestor, Intake
from recsink.jobs import Worker
from recsink.metrics import Metrics

# aiobotocore and the Azure SDK are imported when a pull first needs them: a server that
# never pulls from a bucket does not carry their ~25 MiB of memory.
if TYPE_CHECKING:
    from azure.storage.blob.aio import BlobClient
    from types_aiobotocore_s3 import S3Client

#: Seconds between looks at the catalog when no pull is due and nobody woke the fetcher.
IDLE = 1.0


class PullError(RecsinkError):
    """The media could not be opened where the platform said it is; kept on the record as
    the attempt's reason (``pull_source: …``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("pull_source", detail)


@dataclass
class Media:
    """An open download: its body and, when the source says, its size in bytes."""

    body: Body
    size: int | None


def where(url: str) -> str:
    """What a log line may show of a location: its scheme and host."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


class Fetcher:
    """Pulls recordings in the background: a :class:`~recsink.jobs.Worker` on the catalog's
    pull queue (:meth:`run` is its loop, :meth:`wake` nudges it)."""

    def __init__(self, settings: FetchSettings, ingestor: Ingestor, commits: Commits,
                 metrics: Metrics, http: aiohttp.ClientSession, stack: AsyncExitStack,
                 scheduler: aiojobs.Scheduler) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.commits = commits
        self.catalog = commits.catalog
        self.metrics = metrics
        self._http = http
        self._stack = stack
        self._s3: dict[str, S3Client] = {}
        self.worker = Worker("pull", self._claim, self._pull_once, scheduler,
                             limit=settings.workers, idle=IDLE, tick=self._tick)
        self._log = logs.get_logger()

    def wake(self) -> None:
        """A pull was queued: look at the catalog now rather than at the next tick."""
        self.worker.wake()

    async def run(self) -> None:
        """Pull due recordings forever, ``fetch.workers`` at a time (cancel to stop)."""
        await self.worker.run()

    async def _tick(self) -> None:
        self.metrics.pulls_pending.set(await self.catalog.pending("pull"))

    async def _claim(self, limit: int) -> list[Held]:
        owner = self.commits.new_owner()
        rows = await self.catalog.claim("pull", owner, self.commits.ttl, limit)
        return [self.commits.hold(row, owner) for row in rows]

    async def _pull_once(self, held: Held) -> None:
        record = held.record
        # The write that settles the record says the pull is done, in one go.
        held.settles = dict(pull_state="done", pull_error=None,
                            pull_attempts=record.pull_attempts + 1, next_pull_at=None)
        try:
            # An earlier attempt may have stopped mid-commit: settle what it left first.
            created = await self.commits.settle(held) is None and await self.pull(held)
        except Exception as exc:
            await self._retry_later(held, exc)
            return
        self._log.info("pull.stored", id=record.id, source=record.source,
                       call_id=record.call_id, duplicate=not created,
                       attempts=record.pull_attempts + 1, location=where(record.pull_url or ""))

    async def pull(self, held: Held) -> bool:
        """Stream ``held.record.pull_url`` into storage through ingest, under the lease
        held; True when this stored it. Raises :class:`PullError` and ingest's errors."""
        record = held.record
        assert record.pull_url is not None
        async with self.open(record.pull_url) as media:
            intake = Intake(
                source=record.source, body=media.body, held=held,
                recording_id=record.recording_id, call_id=record.call_id,
                interaction_id=record.interaction_id, account_id=record.account_id,
                from_uri=record.from_uri, to_uri=record.to_uri, started_at=record.started_at,
                duration_ms=record.duration_ms,
                name=record.name or urlsplit(record.pull_url).path.rpartition("/")[2] or None,
                content_length=media.size)
            outcome = await self.ingestor.ingest(intake)
        return outcome.created

    async def _retry_later(self, held: Held, exc: Exception) -> None:
        record = held.record
        attempts = record.pull_attempts + 1
        reason = exc.reason() if isinstance(exc, RecsinkError) else str(exc) or type(exc).__name__
        values: dict[str, Any]
        if attempts >= self.settings.max_attempts:
            values = dict(status=Status.FAILED, pull_state="failed", pull_attempts=attempts,
                          pull_error=reason, error=f"pull failed: {reason}", next_pull_at=None)
            self._log.error("pull.failed", id=record.id, source=record.source,
                            attempts=attempts, reason=reason,
                            location=where(record.pull_url or ""))
        else:
            delay = min(self.settings.backoff_max, self.settings.backoff * 2 ** (attempts - 1))
            values = dict(status=Status.UPLOADING, pull_attempts=attempts, pull_error=reason,
                          error=None, next_pull_at=utcnow() + timedelta(seconds=delay))
            self._log.warning("pull.retry", id=record.id, source=record.source,
                              attempts=attempts, retry_in_s=delay, reason=reason,
                              location=where(record.pull_url or ""))
        if held.leftover:  # something to settle first: the settle queue sees it at once
            await self.commits.leave(held, **values)
        else:
            await self.commits.release(held, **values)

    # -- locations ---------------------------------------------------------------------------

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[Media]:
        """Open the media at ``url`` for streaming. Raises :class:`PullError`."""
        scheme = urlsplit(url).scheme
        if scheme in ("http", "https"):
            opener = self._open_http(url)
        elif scheme in ("s3", "gs"):
            opener = self._open_bucket(url)
        elif scheme == "azure":
            opener = self._open_azure(url)
        else:
            raise PullError(f"unsupported location scheme {scheme!r}")
        async with opener as media:
            yield media

    @asynccontextmanager
    async def _open_http(self, url: str) -> AsyncIterator[Media]:
        timeout = aiohttp.ClientTimeout(sock_connect=self.settings.connect_timeout,
                                        sock_read=self.settings.idle_timeout)
        try:
            response = await self._http.get(url, timeout=timeout)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PullError(f"cannot reach {where(url)}: {exc or type(exc).__name__}") from exc
        async with response:
            if response.status != 200:
                raise PullError(f"HTTP {response.status} from {where(url)}")
            yield Media(RawBody(response.content, self.settings.idle_timeout),
                        response.content_length)

    def _bucket(self, url: str) -> FetchBucket:
        """The ``[[fetch.buckets]]`` entry with the longest prefix of ``url`` (or a default
        entry for the AWS chain)."""
        matches = [b for b in self.settings.buckets
                   if url == b.url or url.startswith(b.url.rstrip("/") + "/")]
        if matches:
            return max(matches, key=lambda b: len(b.url))
        return FetchBucket(url=url)

    async def _client(self, bucket: FetchBucket) -> S3Client:
        from recsink.storage.s3client import open_client

        if bucket.url not in self._s3:
            settings = S3Settings(url=bucket.url, endpoint_url=bucket.endpoint_url,
                                  credentials=bucket.credentials)
            self._s3[bucket.url] = await self._stack.enter_async_context(open_client(settings))
        return self._s3[bucket.url]

    @asynccontextmanager
    async def _open_bucket(self, url: str) -> AsyncIterator[Media]:
        from recsink.storage.s3client import S3_ERRORS, Destination

        location = Destination.parse(url)
        client = await self._client(self._bucket(url))
        try:
            response = await client.get_object(Bucket=location.bucket, Key=location.prefix)
        except S3_ERRORS as exc:
            raise PullError(f"cannot read {where(url)}: {exc}") from exc
        async with response["Body"] as stream:
            yield Media(RawBody(stream, self.settings.idle_timeout),
                        response.get("ContentLength"))

    @asynccontextmanager
    async def _open_azure(self, url: str) -> AsyncIterator[Media]:
        from azure.core.exceptions import AzureError

        account, _, rest = url.removeprefix("azure://").partition("/")
        container, _, blob = rest.partition("/")
        settings = next((a for a in self.settings.azure if a.account == account), None)
        if settings is None or not container or not blob:
            raise PullError(f"no [[fetch.azure]] credentials for account {account!r}"
                            if settings is None else f"not a blob location: {where(url)}")
        client = _azure_client(settings, container, blob)
        async with client:
            try:
                downloader = await client.download_blob()
            except AzureError as exc:
                raise PullError(f"cannot read azure://{account}: {exc}") from exc
            yield Media(ChunksBody(downloader.chunks(), self.settings.idle_timeout),
                        downloader.size)


def _azure_client(settings: FetchAzure, container: str, blob: str) -> BlobClient:
    """A BlobClient from whichever credential ``settings`` holds (connection string,
    account key or SAS token)."""
    from azure.storage.blob.aio import BlobClient

    connection = settings.connection_string.get_secret_value()
    if connection:
        return BlobClient.from_connection_string(
            connection, container_name=container, blob_name=blob)
    endpoint = settings.endpoint_url or f"https://{settings.account}.blob.core.windows.net"
    credential: Any = settings.sas_token.get_secret_value() or None
    if settings.account_key.get_secret_value():
        credential = {"account_name": settings.account,
                      "account_key": settings.account_key.get_secret_value()}
    return BlobClient(account_url=endpoint, container_name=container, blob_name=blob,
                      credential=credential)
