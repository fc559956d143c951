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
credentials, or the AWS chain for a bucket ``fetch.allow`` lists),
``azure://<account>/<container>/<blob>`` (``[[fetch.azure]]`` credentials,
azure-storage-blob). Where a pull may go is :mod:`recsink.egress`'s policy: every HTTP hop
(redirects are followed here, at most :data:`MAX_REDIRECTS`) is checked before it is
requested, and the addresses a name resolves to are checked by the connector's resolver, so
the address checked is the address connected to. A refused location fails the pull at once
(``pull_refused``, logged as ``pull.refused``), without retries.

A location inside recsink's own bucket and prefix (``storage.backend = "s3"``: a platform
that wrote, or was told to copy, the recording there; Sendbird's copy API with
``[sendbird.copy]`` naming recsink's bucket) is **adopted** where it is: its bytes are read
once for the sha256 and audio facts and the record completes with that object as its
storage, without a second copy (:meth:`Fetcher.adopt`).

Every attempt ends within ``fetch.deadline`` seconds of its start, however steadily a source
trickles bytes (``pull_deadline``; nothing partial is kept, and it is retried like any other
failure). Locations may hold secrets (SignalWire's media URLs open without authentication),
so logs and the reasons kept on the record (shown by ``/v1/recordings``) show only their
scheme and host, and never bytes of what a source answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import aiojobs
from yarl import URL

from recsink import logs
from recsink.audio import SNIFF_BYTES, probe_parts, scan, sniff
from recsink.bodies import ChunksBody, RawBody
from recsink.catalog import Status, utcnow
from recsink.commit import Commits, Held
from recsink.config import FetchAzure, FetchBucket, FetchSettings, S3Settings
from recsink.egress import Egress, Refused
from recsink.errors import NotAudio, RecsinkError
from recsink.ingest import Body, Ingestor, Intake
from recsink.jobs import Worker
from recsink.metrics import Metrics
from recsink.resolver import CheckedResolver

# aiobotocore and the Azure SDK are imported when a pull first needs them: a server that
# never pulls from a bucket does not carry their ~25 MiB of memory.
if TYPE_CHECKING:
    from azure.storage.blob.aio import BlobClient
    from types_aiobotocore_s3 import S3Client

#: Seconds between looks at the catalog when no pull is due and nobody woke the fetcher.
IDLE = 1.0
#: Bytes read at a time from an object being adopted.
ADOPT_BLOCK = 1024 * 1024
#: Redirects followed for one HTTP pull (SignalWire's media URLs redirect once).
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

_T = TypeVar("_T")


class PullError(RecsinkError):
    """The media could not be opened where the platform said it is; kept on the record as
    the attempt's reason (``pull_source: …``, ``pull_refused: …``, ``pull_deadline: …``).
    ``final``: trying again cannot help (the location is refused), so the pull fails now."""

    def __init__(self, detail: str, code: str = "pull_source", *, final: bool = False) -> None:
        super().__init__(code, detail)
        self.final = final


def refused(exc: Refused) -> PullError:
    """The final :class:`PullError` for a location the egress policy refuses."""
    return PullError(str(exc), "pull_refused", final=True)


@dataclass
class Media:
    """An open download: its body and, when the source says, its size in bytes."""

    body: Body
    size: int | None


def where(url: str | URL) -> str:
    """What a log line may show of a location: its scheme and host."""
    try:
        parts = urlsplit(str(url))
        return f"{parts.scheme}://{parts.hostname or ''}"
    except ValueError:  # a malformed netloc (an unclosed "[")
        return "(a malformed location)"


class _Bounded:
    """A body whose reads end at the pull's deadline (:func:`before`)."""

    def __init__(self, body: Body, deadline: float, limit: float) -> None:
        self._body, self._deadline, self._limit = body, deadline, limit

    async def read(self, n: int) -> bytes:
        return await before(self._deadline, self._limit, self._body.read(n))


async def before(deadline: float, limit: float, step: Awaitable[_T]) -> _T:
    """``await step``, unless the event loop's clock reaches ``deadline`` first: then
    :class:`PullError` ``pull_deadline`` (``limit`` is ``fetch.deadline``, for the text)."""
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await step
    except TimeoutError:
        if timeout.expired():
            raise PullError(f"not done within fetch.deadline ({limit:g} s)",
                            "pull_deadline") from None
        raise


class Fetcher:
    """Pulls recordings in the background: a :class:`~recsink.jobs.Worker` on the catalog's
    pull queue (:meth:`run` is its loop, :meth:`wake` nudges it)."""

    def __init__(self, settings: FetchSettings, ingestor: Ingestor, commits: Commits,
                 metrics: Metrics, stack: AsyncExitStack, scheduler: aiojobs.Scheduler, *,
                 buckets: Sequence[FetchBucket] = (), own: str | None = None) -> None:
        """``buckets``: bucket access besides ``fetch.buckets`` (``[sendbird.copy]``);
        ``own``: recsink's own ``s3://bucket[/prefix]`` when it stores in S3 (locations
        below it are adopted)."""
        self.settings = settings
        self.buckets = [*settings.buckets, *buckets]
        self.own = own.rstrip("/") + "/" if own else None
        self.ingestor = ingestor
        self.commits = commits
        self.catalog = commits.catalog
        self.metrics = metrics
        self.egress = Egress(settings.allow)
        self._http: aiohttp.ClientSession | None = None  # made by the first HTTP pull
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
        if self.own is not None and record.pull_url.startswith(self.own):
            return await self.adopt(held, record.pull_url)
        async with self.open(record.pull_url) as media:
            intake = Intake(
                source=record.source, body=media.body, held=held,
                recording_id=record.recording_id, call_id=record.call_id,
                interaction_id=record.interaction_id, account_id=record.account_id,
                from_uri=record.from_uri, to_uri=record.to_uri, started_at=record.started_at,
                duration_ms=record.duration_ms,
                name=record.name or _name(record.pull_url), content_length=media.size)
            try:
                outcome = await self.ingestor.ingest(intake)
            except NotAudio as exc:  # its detail quotes the first bytes: not for a source's
                raise NotAudio(exc.code, "the media is not a recording in an accepted format "
                               "(read from its bytes)", **exc.fields) from None
        return outcome.created

    async def adopt(self, held: Held, url: str) -> bool:
        """Complete ``held.record`` with the object at ``url``, which is in recsink's own
        bucket and prefix: read once (sha256, size, format, audio facts), never copied.
        True (this stored it). Raises the final :class:`PullError` for a bucket the egress
        policy does not name, :class:`PullError` when there is no object there (yet),
        :class:`NotAudio`, and storage errors."""
        from recsink.storage.s3client import Destination

        assert self.own is not None
        location = Destination.parse(url)
        self._bucket(url, location.scheme, location.bucket)  # the policy, as for a pull
        storage = self.ingestor.storage
        key = url[len(self.own):]
        found = await storage.find(key)
        if found is None:
            raise PullError(f"no object at {where(url)} (yet)")
        scanned = await scan(storage.read(key, ADOPT_BLOCK))
        fmt = sniff(scanned.head[:SNIFF_BYTES])
        if fmt is None or fmt.value not in self.ingestor.settings.formats:
            raise NotAudio("unsupported_format", "the media is not a recording in an "
                           "accepted format (read from its bytes)")
        facts = await asyncio.to_thread(probe_parts, scanned.head, scanned.tail,
                                        scanned.size, fmt)
        record = held.record
        duration = facts.duration_ms if facts.duration_ms is not None else record.duration_ms
        await self.commits.complete(
            held, found.stored, sha256=scanned.sha256, byte_size=scanned.size,
            format=fmt.value, media_type=fmt.media_type, channels=facts.channels,
            sample_rate=facts.sample_rate, duration_ms=duration)
        self._log.info("pull.adopted", id=record.id, source=record.source,
                       storage_key=key, sha256=scanned.sha256)
        return True

    async def _retry_later(self, held: Held, exc: Exception) -> None:
        record = held.record
        attempts = record.pull_attempts + 1
        # Only recsink's own words reach the record (and the API): an exception's text may
        # quote the location (its query string) or what the source answered.
        reason = (logs.redact_urls(exc.reason()) if isinstance(exc, RecsinkError)
                  else type(exc).__name__)
        final = isinstance(exc, PullError) and exc.final
        values: dict[str, Any]
        if final or attempts >= self.settings.max_attempts:
            values = dict(status=Status.FAILED, pull_state="failed", pull_attempts=attempts,
                          pull_error=reason, error=f"pull failed: {reason}", next_pull_at=None)
            event, log = ("pull.refused", self._log.warning) if final else (
                "pull.failed", self._log.error)
            log(event, id=record.id, source=record.source, attempts=attempts, reason=reason,
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
        """Open the media at ``url`` for streaming; its body's reads, like the opening, end
        ``fetch.deadline`` seconds from now. Raises :class:`PullError`."""
        limit = self.settings.deadline
        deadline = asyncio.get_running_loop().time() + limit
        scheme = urlsplit(url).scheme
        if scheme in ("http", "https"):
            opener = self._open_http(url, deadline)
        elif scheme in ("s3", "gs"):
            opener = self._open_bucket(url, deadline)
        elif scheme == "azure":
            opener = self._open_azure(url, deadline)
        else:
            raise PullError(f"unsupported location scheme {scheme!r}", final=True)
        async with opener as media:
            yield Media(_Bounded(media.body, deadline, limit), media.size)

    def _check_resolved(self, host: str, port: int, address: str) -> None:
        """The egress policy on an address ``host`` resolved to (:mod:`recsink.resolver`).
        Raises :class:`~recsink.egress.Refused`."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise Refused(f"{host} resolves to something that is not an address") from None
        self.egress.check_address(host, port, ip)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            resolver = CheckedResolver(self._check_resolved, error=Refused)
            connector = aiohttp.TCPConnector(resolver=resolver)
            self._http = aiohttp.ClientSession(connector=connector)
            self._stack.push_async_callback(self._http.close)
        return self._http

    @asynccontextmanager
    async def _open_http(self, url: str, deadline: float) -> AsyncIterator[Media]:
        timeout = aiohttp.ClientTimeout(sock_connect=self.settings.connect_timeout,
                                        sock_read=self.settings.idle_timeout)
        try:
            target = URL(url)
        except ValueError:
            raise PullError(f"not a valid location: {where(url)}", final=True) from None
        for _ in range(MAX_REDIRECTS + 1):
            self._check_hop(target)
            try:
                response = await before(
                    deadline, self.settings.deadline,
                    self._session().get(target, timeout=timeout, allow_redirects=False))
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, Refused):
                    raise refused(exc.os_error) from None
                raise PullError(f"cannot reach {where(target)}: "
                                f"{exc.strerror or type(exc.os_error).__name__}") from exc
            except TimeoutError as exc:
                raise PullError(f"no answer from {where(target)} in time") from exc
            except aiohttp.ClientError as exc:
                raise PullError(f"cannot reach {where(target)}: {type(exc).__name__}") from exc
            async with response:
                if response.status in _REDIRECTS:
                    target = self._redirect(target, response)
                    continue
                if response.status != 200:  # and nothing of its body, which is the source's
                    raise PullError(f"HTTP {response.status} from {where(target)}")
                yield Media(RawBody(response.content, self.settings.idle_timeout),
                            response.content_length)
                return
        raise PullError(f"more than {MAX_REDIRECTS} redirects from {where(url)}", final=True)

    def _check_hop(self, target: URL) -> None:
        """Raise the final :class:`PullError` unless ``target`` may be requested."""
        try:
            if target.scheme not in ("http", "https") or not target.raw_host:
                raise Refused(f"not an http(s) location: {where(target)}")
            assert target.port is not None  # yarl gives http(s) URLs their default port
            self.egress.check_host(target.raw_host, target.port)
        except Refused as exc:
            raise refused(exc) from None

    @staticmethod
    def _redirect(target: URL, response: aiohttp.ClientResponse) -> URL:
        location = response.headers.get("Location")
        if not location:
            raise PullError(f"HTTP {response.status} without a Location from {where(target)}")
        try:
            return target.join(URL(location))
        except ValueError:
            raise PullError(f"a redirect from {where(target)} to a malformed location",
                            final=True) from None

    def _bucket(self, url: str, scheme: str, bucket: str) -> FetchBucket:
        """The ``[[fetch.buckets]]`` entry with the longest prefix of ``url``, or one for
        the AWS chain when ``fetch.allow`` lists the bucket. Raises the final
        :class:`PullError` for any other bucket."""
        matches = [b for b in self.buckets
                   if url == b.url or url.startswith(b.url.rstrip("/") + "/")]
        if matches:
            return max(matches, key=lambda b: len(b.url))
        if self.egress.allows_bucket(scheme, bucket):
            return FetchBucket(url=f"{scheme}://{bucket}")
        raise refused(Refused(f"{scheme}://{bucket} is in neither fetch.buckets nor "
                              "fetch.allow"))

    async def _client(self, bucket: FetchBucket) -> S3Client:
        from recsink.storage.s3client import open_client

        if bucket.url not in self._s3:
            settings = S3Settings(url=bucket.url, endpoint_url=bucket.endpoint_url,
                                  credentials=bucket.credentials)
            self._s3[bucket.url] = await self._stack.enter_async_context(open_client(settings))
        return self._s3[bucket.url]

    @asynccontextmanager
    async def _open_bucket(self, url: str, deadline: float) -> AsyncIterator[Media]:
        from botocore.exceptions import ClientError

        from recsink.storage.s3client import S3_ERRORS, Destination

        location = Destination.parse(url)
        if not location.bucket:
            raise PullError(f"not an object location: {where(url)}", final=True)
        client = await self._client(self._bucket(url, location.scheme, location.bucket))
        try:
            response = await before(deadline, self.settings.deadline, client.get_object(
                Bucket=location.bucket, Key=location.prefix))
        except S3_ERRORS as exc:  # the store's error code, not its message
            code = exc.response.get("Error", {}).get("Code") if isinstance(
                exc, ClientError) else None
            raise PullError(f"cannot read {where(url)}: {code or type(exc).__name__}") from exc
        async with response["Body"] as stream:
            yield Media(RawBody(stream, self.settings.idle_timeout),
                        response.get("ContentLength"))

    @asynccontextmanager
    async def _open_azure(self, url: str, deadline: float) -> AsyncIterator[Media]:
        from azure.core.exceptions import AzureError, HttpResponseError

        account, _, rest = url.removeprefix("azure://").partition("/")
        container, _, blob = rest.partition("/")
        settings = next((a for a in self.settings.azure if a.account == account), None)
        if settings is None:
            raise refused(Refused(f"no [[fetch.azure]] credentials for account {account!r}"))
        if not container or not blob:
            raise PullError(f"not a blob location: azure://{account}", final=True)
        if not self.egress.allows_container(account, container):
            raise refused(Refused(f"azure://{account}/{container} is not in fetch.allow"))
        client = _azure_client(settings, container, blob)
        async with client:
            try:
                downloader = await before(deadline, self.settings.deadline,
                                          client.download_blob())
            except AzureError as exc:  # the store's error code, not its message
                status = exc.status_code if isinstance(exc, HttpResponseError) else None
                raise PullError(f"cannot read azure://{account}: {type(exc).__name__}"
                                + (f" (HTTP {status})" if status else "")) from exc
            yield Media(ChunksBody(downloader.chunks(), self.settings.idle_timeout),
                        downloader.size)


def _name(url: str) -> str | None:
    """The file name a location ends with, if any."""
    return urlsplit(url).path.rpartition("/")[2] or None


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
