"""recsink settings: one TOML file, every key overridable from the environment.

Sources, highest priority first:

1. environment variables ``RECSINK_<SECTION>__<KEY>`` (nested delimiter ``__``; lists and
   tables as JSON, e.g. ``RECSINK_AUTH__URL_TOKENS='["s3cr3t"]'``);
2. the TOML file given to ``recsink serve --config PATH``;
3. the defaults below, which are what ``recsink serve`` runs on with no file at all
   (disk storage and SQLite catalog under ``./var``, listening on 127.0.0.1:8080).

Relative paths are relative to the working directory. Unknown keys are errors, so a typo
in a key name is reported instead of silently ignored. See ``config.example.toml`` for a
commented copy of every key and DESIGN.md "HTTP surface and configuration".
"""

from __future__ import annotations

import base64
import ipaddress
import re
import string
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from recsink.egress import parse_rule

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Variables a ``storage.key_template`` may use (see :mod:`recsink.storage.keys`).
KEY_TEMPLATE_FIELDS = frozenset(
    {
        "account_id", "owner_id", "call_id", "recording_id", "id", "source",
        "yyyy", "mm", "dd", "hh", "ext",
    }
)


#: First path segments recsink serves itself, never Kazoo prefixes.
RESERVED_ROUTES = frozenset({"v1", "ui", "healthz", "readyz", "metrics"})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Section):
    """``[server]``: where recsink listens and how long it waits for slow clients."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    #: The event loop: Python's own ``asyncio``, or ``uvloop`` (libuv: about 5 % more small
    #: requests per second, bench/RESULTS.md; but accept() failures when file descriptors
    #: run out are retried by libuv without a word, so recsink cannot count or log them).
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    #: Seconds a request body may stay silent before the upload is failed (408).
    body_idle_timeout: float = Field(60.0, gt=0)
    #: Seconds a client gets to send a request head: a new connection from its opening, a
    #: keep-alive connection from the head's first byte. Then the connection is closed.
    header_timeout: float = Field(15.0, gt=0)
    #: Seconds an idle keep-alive connection is kept open.
    keepalive_timeout: float = Field(75.0, gt=0)
    #: Client connections open at once, on every listener together; a connection beyond
    #: it is closed as soon as it is accepted, before anything is read. recsink checks at
    #: start that RLIMIT_NOFILE (raised towards its hard limit if needed) leaves room for
    #: these plus its own files (README "Limits").
    max_connections: int = Field(1024, ge=1)
    #: Uploads received at once; beyond, 503 with Retry-After (the PBX retries).
    max_uploads: int = Field(256, ge=1)
    #: aiohttp's read buffer per request, bytes: it stops reading a connection holding twice
    #: this unread. (The rest of a large raw upload is read by a worker thread instead.)
    read_bufsize: int = Field(16 * KiB, ge=4 * KiB, le=16 * MiB)
    #: Memory for what connections read ahead of their handlers, bytes: once a request is
    #: taken up, its connection reads its share of this at a time (16-256 KiB).
    read_buffer_bytes: int = Field(16 * MiB, ge=1 * MiB)
    #: Seconds in-flight requests get to finish after SIGTERM/SIGINT; the rest are aborted
    #: (nothing partial is kept; the PBX retries them).
    drain_timeout: float = Field(30.0, ge=0)


class OpsSettings(_Section):
    """``[ops]``: the operations routes /healthz, /readyz and /metrics.

    Who may read /readyz and /metrics (/healthz is always open and says only "ok"): with
    ``token``, callers with that bearer token; else, when ``listen`` is a loopback address,
    anyone there (only local processes reach it); else, when ``[auth]`` has credentials, callers
    with an upload credential (as for an upload; ``auth.allow_networks`` applies); else
    anyone. Only callers who passed a credential see why /readyz is not ready; the others get
    its verdict, and the reasons go to the log (``ready.unavailable``)."""

    #: Serve them on their own address (``host:port``, e.g. ``127.0.0.1:9090``) instead of
    #: the main one. Empty: on the main address. Its port must differ from ``server.port``
    #: (the routes are told apart by the port a connection arrived on); 0 picks a free one.
    listen: str = ""
    #: Bearer token required for /readyz and /metrics (/healthz stays open). Empty: see
    #: above.
    token: SecretStr = SecretStr("")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        if listen:
            host, sep, port = listen.rpartition(":")
            if not sep or not host or not port.isdigit() or int(port) > 65535:
                raise ValueError("must be host:port, e.g. 127.0.0.1:9090")
        return listen

    @property
    def address(self) -> tuple[str, int] | None:
        if not self.listen:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def apart_from(self, server: ServerSettings) -> None:
        """Raise ValueError when ``listen`` would share the main listener's port (a fixed
        one): on any address, connections there would be taken for ops connections (every
        upload 404, /metrics on the main address), or the two would not both bind."""
        if (address := self.address) is None:
            return
        port = address[1]
        if port != 0 and port == server.port:
            raise ValueError(
                f"ops.listen: {self.listen!r} uses port {port}, the main listener's "
                f"(server.host {server.host!r}, server.port {server.port}); whatever the "
                "address, the ops routes are told apart by port: give ops.listen another "
                "port (or leave it empty to serve them on the main address)")

    @property
    def on_loopback(self) -> bool:
        """Whether ``listen`` is a loopback address (only local processes reach it)."""
        return self.address is not None and is_loopback(self.address[0])


class DiskSettings(_Section):
    """``[storage.disk]``: the local filesystem backend."""

    root: Path = Path("var/recordings")
    #: fsync every recording and its directory before acknowledging it. Turn off only on
    #: storage that is durable without it; a crash may then lose acknowledged recordings.
    fsync: bool = True


def _bucket_url(url: str) -> str:
    if not re.fullmatch(r"(s3|gs)://[a-z0-9][a-z0-9.\-_]{1,254}(/.*)?", url):
        raise ValueError("must be s3://bucket[/prefix] or gs://bucket[/prefix]")
    return url


def _bucket_credentials(credentials: SecretStr) -> SecretStr:
    value = credentials.get_secret_value()
    if value and len(value.split(":")) != 3:
        raise ValueError("must be AccessKey:SecretKey:Region (or empty for the AWS chain)")
    return credentials


class S3Settings(_Section):
    """``[storage.s3]``: an S3 (or S3-compatible, or Google Cloud Storage) bucket."""

    #: Destination in Sinch's form: ``s3://bucket/prefix`` or ``gs://bucket/prefix`` (Google
    #: Cloud Storage through its XML interoperability endpoint, with HMAC keys).
    url: str = ""
    #: S3-compatible stores (MinIO, Ceph, R2, Wasabi): their endpoint. Empty: AWS, or
    #: https://storage.googleapis.com for gs://.
    endpoint_url: str = ""
    #: ``AccessKey:SecretKey:Region`` (Sinch's form). Empty: the standard AWS chain
    #: (environment, ~/.aws, instance role).
    credentials: SecretStr = SecretStr("")
    #: Region when the credentials do not name one; empty: us-east-1 (``auto`` for gs://).
    region: str = ""
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    #: botocore's checksum behaviour; ``when_required`` is what third-party stores accept.
    request_checksum_calculation: Literal["when_required", "when_supported"] = "when_required"
    #: Server-side encryption: "", "AES256" or "aws:kms" (with ``sse_kms_key_id``).
    server_side_encryption: Literal["", "AES256", "aws:kms"] = ""
    sse_kms_key_id: str = ""
    #: Storage class for new objects ("" = the bucket's default), e.g. STANDARD_IA.
    storage_class: str = ""
    #: Multipart part size, bytes (S3's minimum is 5 MiB). A body of at most one part goes
    #: up in one PutObject.
    part_size: int = Field(5 * MiB, ge=5 * MiB, le=512 * MiB)
    #: Parts of one upload sent while the next is read.
    parts_in_flight: int = Field(4, ge=1, le=64)
    #: Part buffers shared by all uploads, bytes: the bound on recsink's S3 buffer memory.
    #: Uploads wait for a free buffer (reading the client no further) when all are in use.
    #: 8 parts of 5 MiB: as many parts under way as 8 MiB parts in 64 MiB did, in 24 MiB less.
    max_buffer_bytes: int = Field(40 * MiB, ge=10 * MiB)
    #: Attempts per S3 request, the first included (botocore standard retries, with
    #: backoff, on throttling and 5xx; 1: no retries), and connect/read timeouts in seconds.
    max_attempts: int = Field(5, ge=1, le=20)
    connect_timeout: float = Field(5.0, gt=0)
    read_timeout: float = Field(60.0, gt=0)
    #: Local spool for recordings received while S3 is unreachable (fsynced like disk
    #: storage), shipped to S3 in the background.
    spool_dir: Path = Path("var/spool")
    #: The name the catalog knows this spool by (a spooled copy is shipped only by the
    #: instance whose spool holds it). Empty: ``<hostname>:<absolute spool_dir>``. Set it to
    #: a lost instance's spool id to ship that spool from another machine.
    spool_id: str = ""
    #: Seconds new uploads go straight to the spool after S3 was found unreachable.
    unreachable_hold: float = Field(10.0, gt=0)
    #: Shipping retries back off exponentially from 1 s up to this many seconds.
    ship_backoff_max: float = Field(300.0, ge=1)

    @field_validator("url")
    @classmethod
    def _destination(cls, url: str) -> str:
        return _bucket_url(url) if url else url

    @field_validator("credentials")
    @classmethod
    def _three_parts(cls, credentials: SecretStr) -> SecretStr:
        return _bucket_credentials(credentials)

    @model_validator(mode="after")
    def _two_parts(self) -> S3Settings:
        if self.max_buffer_bytes < 2 * self.part_size:
            raise ValueError("max_buffer_bytes must hold at least two parts")
        return self


class StorageSettings(_Section):
    """``[storage]``: which backend stores recordings and how objects are named."""

    backend: Literal["disk", "s3"] = "disk"
    #: Object name for a stored recording, relative to the storage root. Variables:
    #: account_id, owner_id, call_id, recording_id, id, source, yyyy, mm, dd, hh (UTC, of the
    #: call's start, else of receipt), ext. Values are sanitized into single safe path
    #: segments; an empty value becomes "_".
    key_template: str = "{account_id}/{yyyy}/{mm}/{dd}/{recording_id}.{ext}"
    disk: DiskSettings = DiskSettings()
    s3: S3Settings = S3Settings()

    @model_validator(mode="after")
    def _s3_destination(self) -> StorageSettings:
        if self.backend == "s3" and not self.s3.url:
            raise ValueError("storage.s3.url: required when storage.backend = \"s3\"")
        return self

    @field_validator("key_template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from exc
        fields = [f for _, f, _, _ in parsed if f is not None]
        unknown = sorted({f for f in fields if f not in KEY_TEMPLATE_FIELDS})
        if unknown or "" in fields:
            raise ValueError(
                f"unknown variable(s) {unknown or ['{}']}; "
                f"use {sorted(KEY_TEMPLATE_FIELDS)}"
            )
        if any(spec or conversion for _, f, spec, conversion in parsed if f is not None):
            raise ValueError("variables take no format spec or conversion ({id}, not {id:>8})")
        if not template.endswith(".{ext}"):
            raise ValueError("must end in .{ext} so the stored name carries the format")
        if template.startswith("/") or ".." in template.split("/"):
            raise ValueError("must be relative and must not contain '..'")
        return template


class CatalogSettings(_Section):
    """``[catalog]``: where recording records live: SQLite (one machine) or PostgreSQL (a
    fleet of instances sharing one catalog)."""

    #: The SQLite catalog, used unless ``url`` is set.
    path: Path = Path("var/recsink.db")
    #: ``postgresql://user[:password]@host:5432/db`` (any libpq URL or DSN): a PostgreSQL
    #: catalog shared by every instance of a fleet. Empty: SQLite at ``path``.
    url: SecretStr = SecretStr("")
    #: PostgreSQL connections this instance keeps at most (instances x pool_size must stay
    #: under the server's max_connections, or PgBouncer's pool).
    pool_size: int = Field(10, ge=1, le=1000)
    #: Seconds to wait for a catalog connection before an operation fails (503).
    connect_timeout: float = Field(5.0, gt=0)
    #: Let PostgreSQL keep the catalog's statements prepared on each connection (psycopg's
    #: prepare_threshold): less server CPU per write. Off by default, because it is session
    #: state that PgBouncer in transaction mode (before 1.21, or without
    #: max_prepared_statements) cannot carry; turn it on for direct connections.
    prepared_statements: bool = False
    #: Seconds a lease (an upload, pull, shipping or settle working on a record) lasts
    #: unless renewed; holders renew it every third of this while they make progress. An
    #: instance that dies leaves its leases to expire, and the next request or the sweeper
    #: of any instance takes them over.
    lease_ttl: float = Field(60.0, ge=1)
    #: Seconds a request for a recording whose lease another upload holds waits for it to
    #: end, before answering 503 with Retry-After.
    lease_wait: float = Field(20.0, ge=0)
    #: Seconds between looks for expired leases to settle (interrupted uploads).
    sweep_interval: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _postgres(cls, url: SecretStr) -> SecretStr:
        value = url.get_secret_value()
        if value and not value.startswith(("postgresql://", "postgres://")) and "=" not in value:
            raise ValueError("must be a postgresql:// URL or a libpq DSN (host=… dbname=…)")
        return url


class IngestSettings(_Section):
    """``[ingest]``: limits and policy applied to every recording, whatever its source."""

    #: Largest accepted recording, bytes. Larger bodies are answered 413, decided from
    #: Content-Length before reading and again while streaming. 3 h of 16 kHz stereo WAV
    #: is about 700 MB.
    max_bytes: int = Field(1 * GiB, ge=1)
    #: Bytes handed to hashing and storage at a time (a block), at most. A multiple of
    #: 64 KiB.
    chunk_size: int = Field(1 * MiB, ge=64 * KiB, le=64 * MiB, multiple_of=64 * KiB)
    #: Memory for the blocks of all uploads streaming at once, bytes. An upload's block is
    #: ``chunk_size``, or less when many uploads stream at once: its share of this, or what
    #: is left of it (64 KiB at least).
    buffer_bytes: int = Field(16 * MiB, ge=1 * MiB)
    #: Recording formats accepted (sniffed from the bytes, not from Content-Type).
    formats: list[Literal["wav", "mp3"]] = ["wav", "mp3"]
    #: Recordings shorter than this are discarded on purpose (status ``discarded``,
    #: answered 200 so the PBX stops retrying). 0 keeps everything.
    min_duration_ms: int = Field(0, ge=0)


_ACCOUNT_ID = re.compile(r"[0-9a-f]{32}")


def _account_ids(accounts: list[str]) -> list[str]:
    """Kazoo account ids (32 hex digits), lower-cased."""
    ids = [a.lower() for a in accounts]
    for account in ids:
        if not _ACCOUNT_ID.fullmatch(account):
            raise ValueError(f"{account!r} is not a Kazoo account id (32 hex digits)")
    return ids


class BasicCredential(_Section):
    """One HTTP Basic user; Kazoo sends it from ``http://user:pass@host/…``."""

    username: str = Field(min_length=1)
    password: SecretStr
    #: Kazoo account ids (32 hex digits) this user may upload and read recordings of;
    #: empty: every account (and uploads that name none).
    accounts: list[str] = []

    _accounts = field_validator("accounts")(_account_ids)

    @field_validator("username")
    @classmethod
    def _no_colon(cls, username: str) -> str:
        if ":" in username:
            raise ValueError("must not contain ':'")
        return username


class BoundToken(_Section):
    """A token bound to accounts: ``{ token = "…", accounts = ["<account id>", …] }``."""

    token: SecretStr
    #: Kazoo account ids (32 hex digits) the token may upload and read recordings of;
    #: empty: every account.
    accounts: list[str] = []

    _accounts = field_validator("accounts")(_account_ids)

    @field_validator("token")
    @classmethod
    def _not_empty(cls, token: SecretStr) -> SecretStr:
        if not token.get_secret_value():
            raise ValueError("must not be empty")
        return token


def _bound(tokens: list[SecretStr | BoundToken]) -> list[BoundToken]:
    return [t if isinstance(t, BoundToken) else BoundToken(token=t) for t in tokens]


class AuthSettings(_Section):
    """``[auth]``: who may upload (and fetch back) recordings on the Kazoo routes."""

    basic: list[BasicCredential] = []
    #: Accepted ``Authorization: Bearer <token>`` values: plain strings, or tables
    #: ``{ token = "…", accounts = [...] }`` bound to accounts (:class:`BoundToken`).
    bearer_tokens: list[SecretStr | BoundToken] = []
    #: Secret tokens accepted as the first path segment after the route prefix
    #: (``/kazoo/<token>/…``) or as the query parameter named by ``query_token_param``:
    #: plain strings, or tables ``{ token = "…", accounts = [...] }`` (:class:`BoundToken`).
    #: A credential bound to accounts uploads and reads only those accounts' recordings
    #: (403 ``account_not_allowed`` otherwise, and for uploads that name no account).
    url_tokens: list[SecretStr | BoundToken] = []
    query_token_param: str = Field("token", min_length=1)
    #: Client networks (CIDR) allowed to connect; empty allows every address.
    allow_networks: list[IPvAnyNetwork] = []
    #: recsink refuses to listen on a non-loopback address with no credentials configured
    #: unless this is true (for example behind a network allow-list you trust).
    allow_unauthenticated: bool = False

    @property
    def has_credentials(self) -> bool:
        return bool(self.basic or self.bearer_tokens or self.url_tokens)

    @property
    def bearer(self) -> list[BoundToken]:
        """``bearer_tokens``, every entry as a :class:`BoundToken` (unbound: no accounts)."""
        return _bound(self.bearer_tokens)

    @property
    def url(self) -> list[BoundToken]:
        """``url_tokens``, every entry as a :class:`BoundToken` (unbound: no accounts)."""
        return _bound(self.url_tokens)


def _route(path: str) -> str:
    """``path`` as a route: one leading slash, none trailing, not shadowing recsink's own
    routes, plain ASCII."""
    path = "/" + path.strip("/")
    if path == "/" or path.split("/")[1] in RESERVED_ROUTES:
        raise ValueError(f"{path!r} would hide the routes {sorted(RESERVED_ROUTES)}")
    if not path.isascii() or any(c in path for c in "{}?#%"):
        raise ValueError(f"{path!r}: use plain ASCII path characters")
    return path


class KazooSettings(_Section):
    """``[kazoo]``: the Kazoo upload routes."""

    #: Route prefixes; every path equal to or below one is a Kazoo upload or GET probe
    #: (``/kazoo/call_recording_….mp3``, ``/kazoo?token=…&recording=…``). Point Kazoo's
    #: ``url`` at ``http(s)://host:port`` + a prefix.
    prefixes: list[str] = Field(default=["/kazoo"], min_length=1)

    @field_validator("prefixes")
    @classmethod
    def _routes(cls, prefixes: list[str]) -> list[str]:
        return [_route(p) for p in prefixes]


class SinchApplication(_Section):
    """One Sinch application (or Voice API 2.0 service): its key and its secret, Base64 as
    the dashboard shows it."""

    key: str = Field(min_length=1)
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _base64(cls, secret: SecretStr) -> SecretStr:
        try:
            base64.b64decode(secret.get_secret_value(), validate=True)
        except ValueError as exc:
            raise ValueError("must be the Base64 secret shown in the Sinch dashboard") from exc
        return secret


class SinchSettings(_Section):
    """``[sinch]``: Sinch Voice notify events (``recording_finished``,
    ``recording_available``), specs/callbacks.md §A."""

    #: Route of the application's calling callback URL.
    path: str = "/sinch/voice"
    #: Applications whose callbacks are accepted; each signs with its key and secret
    #: (``application`` scheme, and Voice API 2.0's ``service`` scheme).
    applications: list[SinchApplication] = []
    #: Refuse callbacks without a valid signature. Turn off only for a trusted network.
    verify_signatures: bool = True
    #: Seconds an ``x-timestamp`` may lie in the past; a signature stays acceptable, and is
    #: remembered against replays, this long.
    timestamp_window: float = Field(900.0, gt=0)
    #: Seconds an ``x-timestamp`` may lie in the future (Sinch's clock ahead of ours).
    timestamp_future: float = Field(60.0, ge=0)
    #: Copy each recording into recsink's storage when ``recording_available`` names it.
    pull: bool = False

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _route(path)


class LamlSettings(_Section):
    """``[laml]``: SignalWire / Twilio-compatible RecordingStatusCallback,
    specs/callbacks.md §B."""

    path: str = "/laml/recording-status"
    #: The project's Signing Key (SignalWire Dashboard, API Credentials).
    signing_key: SecretStr = SecretStr("")
    #: The scheme, host (and port) SignalWire calls, e.g. ``https://recsink.example.com``:
    #: signatures cover the public URL, which a proxy in front of recsink rewrites.
    public_base_url: str = ""
    verify_signatures: bool = True
    #: Copy each completed recording into recsink's storage, as ``wav`` or ``mp3``
    #: (``RecordingUrl`` + ``.wav``/``.mp3``).
    pull: bool = False
    pull_format: Literal["wav", "mp3"] = "wav"

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _route(path)

    @model_validator(mode="after")
    def _signing_needs_key(self) -> LamlSettings:
        if self.verify_signatures and self.signing_key.get_secret_value() and not (
                self.public_base_url.startswith(("http://", "https://"))):
            raise ValueError("laml.public_base_url: required (http(s)://host[:port]) to "
                             "verify signatures, which cover the public URL")
        return self


class SendbirdCopy(_Section):
    """``[sendbird.copy]``: the S3 bucket Sendbird's copy API writes completed cloud
    recordings into (specs/sendbird.md §2), read back by recsink with the same keys. It
    must be in the Sendbird application's region; Sendbird needs ``s3:PutObject`` and
    ``s3:ListBucket`` on it, recsink ``s3:GetObject``. Unused while ``bucket`` is empty."""

    #: The bucket's name; empty: no copies (records end ``completed`` at Sendbird).
    bucket: str = ""
    #: The bucket's region (Sendbird's copy API requires it).
    region: str = ""
    #: The access key and secret key Sendbird writes with, and recsink reads with.
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    #: Key prefix Sendbird writes under (its ``recording_file_directory``), e.g.
    #: ``sendbird/``; empty: the bucket's top level.
    directory: str = ""
    #: S3-compatible stores: their endpoint, for recsink's reads (Sendbird writes to AWS).
    #: Empty: AWS.
    endpoint_url: str = ""

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, bucket: str) -> str:
        if bucket:
            _bucket_url(f"s3://{bucket}")
        return bucket

    @model_validator(mode="after")
    def _complete(self) -> SendbirdCopy:
        if self.bucket and not (self.region and self.access_key.get_secret_value()
                                and self.secret_key.get_secret_value()):
            raise ValueError("sendbird.copy: region, access_key and secret_key are required "
                             "with a bucket")
        return self

    @property
    def url(self) -> str:
        """``s3://bucket``: where the copies are read from."""
        return f"s3://{self.bucket}"


class SendbirdSettings(_Section):
    """``[sendbird]``: Sendbird Calls webhooks and cloud recordings (specs/sendbird.md,
    specs/callbacks.md §C). Off unless ``application_id`` and ``api_token`` are set."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    #: The Sendbird application's id (Dashboard, Settings > Application > General).
    application_id: str = ""
    #: The application's master API token: it signs webhooks (``x-sendbird-signature``)
    #: and authenticates recsink's Platform API requests (``Api-Token``).
    api_token: SecretStr = SecretStr("")
    #: The Platform API's base URL; empty: ``https://api-{application_id}.calls.sendbird.com``.
    #: Operator configuration (a proxy, a test stand-in), so ``fetch.allow`` does not apply.
    api_url: str = ""
    #: Route of the webhook URL set in the Dashboard.
    path: str = "/sendbird/calls"
    #: Seconds before the second poll of an ended call or deleted room, doubled for each
    #: further one up to ``poll_backoff_max``.
    poll_backoff: float = Field(5.0, gt=0)
    poll_backoff_max: float = Field(300.0, gt=0)
    #: Seconds after a call or room was first seen that recsink stops asking; recordings
    #: still unsettled then end ``failed`` (``sendbird_poll_expired``).
    poll_max_age: float = Field(86400.0, gt=0)
    #: Seconds between reconcile sweeps (one instance of a fleet runs each): direct calls
    #: that ended within the last ``reconcile_window`` seconds are listed, and any whose
    #: recordings are not settled here is polled (a lost webhook costs a delay only).
    reconcile_interval: float = Field(300.0, gt=0)
    reconcile_window: float = Field(3600.0, gt=0)
    #: Seconds one Platform API request may take.
    request_timeout: float = Field(30.0, gt=0)
    #: Where completed recordings are copied to (``[sendbird.copy]``); without a bucket,
    #: records end ``completed`` at Sendbird with no ``storage_url`` (the Platform API
    #: offers no download). ``copy`` in TOML (the name shadows pydantic's ``copy()``).
    copy_section: SendbirdCopy = Field(SendbirdCopy(), alias="copy")

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        return _route(path)

    @field_validator("api_url")
    @classmethod
    def _http(cls, url: str) -> str:
        if url and not re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", url):
            raise ValueError("must be an http:// or https:// URL")
        return url.rstrip("/")

    @property
    def enabled(self) -> bool:
        return bool(self.application_id and self.api_token.get_secret_value())

    @property
    def copy_to(self) -> SendbirdCopy | None:
        """``[sendbird.copy]`` when it names a bucket, else None."""
        return self.copy_section if self.copy_section.bucket else None

    @property
    def base_url(self) -> str:
        """The Platform API's base URL (``api_url``, or the application's own host)."""
        return self.api_url or f"https://api-{self.application_id}.calls.sendbird.com"


class FetchBucket(_Section):
    """Read access to a bucket that recordings are pulled from (``s3://``, ``gs://``)."""

    #: Destination prefix this entry applies to, e.g. ``s3://customer-recordings``.
    url: str
    endpoint_url: str = ""
    #: ``AccessKey:SecretKey:Region``; empty: the standard AWS chain.
    credentials: SecretStr = SecretStr("")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return _bucket_url(url)

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, credentials: SecretStr) -> SecretStr:
        return _bucket_credentials(credentials)


class FetchAzure(_Section):
    """Read access to an Azure storage account that recordings are pulled from
    (``azure://<account>/<container>/<blob>``)."""

    account: str = Field(min_length=1)
    #: A connection string, or an account key, or a SAS token (one of them).
    connection_string: SecretStr = SecretStr("")
    account_key: SecretStr = SecretStr("")
    sas_token: SecretStr = SecretStr("")
    #: Blob endpoint; empty: https://<account>.blob.core.windows.net.
    endpoint_url: str = ""


class FetchSettings(_Section):
    """``[fetch]``: pulling recordings from where a platform put them, in the background."""

    #: Pulls running at once.
    workers: int = Field(4, ge=1, le=64)
    #: Attempts before a pull ends ``failed`` (with the reason).
    max_attempts: int = Field(8, ge=1)
    #: Seconds before the second attempt, doubled for each further one, up to backoff_max.
    backoff: float = Field(2.0, gt=0)
    backoff_max: float = Field(600.0, gt=0)
    #: Seconds to connect, and seconds a download may stay silent.
    connect_timeout: float = Field(10.0, gt=0)
    idle_timeout: float = Field(60.0, gt=0)
    #: Seconds one attempt may take in all (connecting, redirects, the download), however
    #: steadily bytes arrive; past it the attempt fails (``pull_deadline``), keeps nothing
    #: and is retried like any other.
    deadline: float = Field(1800.0, gt=0)
    #: Where pulls may go (:mod:`recsink.egress`): host names (``media.example.com``,
    #: ``*.example.com``), ``host:port``, IP networks or addresses (``10.0.0.0/8``,
    #: ``127.0.0.1/32``), ``s3://bucket``, ``gs://bucket``, ``azure://account/container``.
    #: Empty: any public address, no private one. Set: only what it lists; a private address
    #: only when a listed network covers it; buckets of ``buckets`` stay allowed.
    allow: list[str] = []
    buckets: list[FetchBucket] = []
    azure: list[FetchAzure] = []

    @field_validator("allow")
    @classmethod
    def _allow(cls, entries: list[str]) -> list[str]:
        problems = []
        for entry in entries:
            try:
                parse_rule(entry)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return entries


#: What an API token may do: ``read`` (every GET, and the webhook delivery routes),
#: ``delete`` (DELETE /v1/recordings/{id}, POST /v1/erasures), ``hold`` (legal holds).
Scope = Literal["read", "delete", "hold"]


class ApiToken(_Section):
    """A named, scoped API token: ``{ name = "…", token = "…", scopes = [...] }``."""

    #: What log lines name the token by (the token itself never shows).
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    token: SecretStr
    scopes: list[Scope] = ["read"]

    @field_validator("token")
    @classmethod
    def _not_empty(cls, token: SecretStr) -> SecretStr:
        if not token.get_secret_value():
            raise ValueError("must not be empty")
        return token


class ApiSettings(_Section):
    """``[api]``: the recording API under ``/v1``."""

    #: Bearer tokens for ``/v1/…``: plain strings (scope ``read``, named ``token-<n>`` by
    #: their index in logs), or tables ``{ name, token, scopes }`` (:class:`ApiToken`). A
    #: request without the scope a route needs gets 403 ``missing_scope``. Empty: the
    #: upload credentials of ``[auth]`` apply instead, with scope ``read`` only.
    tokens: list[SecretStr | ApiToken] = []

    @property
    def named(self) -> list[ApiToken]:
        """``tokens``, every entry as an :class:`ApiToken`."""
        return [t if isinstance(t, ApiToken) else ApiToken(name=f"token-{n}", token=t)
                for n, t in enumerate(self.tokens)]

    @field_validator("tokens")
    @classmethod
    def _unique_names(cls, tokens: list[SecretStr | ApiToken]) -> list[SecretStr | ApiToken]:
        names = [t.name for t in tokens if isinstance(t, ApiToken)]
        if len(names) != len(set(names)):
            raise ValueError("token names must be unique")
        return tokens


class RetentionRule(_Section):
    """``[[retention.rules]]``: how long recordings are kept; the first rule whose filters
    match a recording applies."""

    #: Only recordings from this source (kazoo, sinch, laml); empty: any.
    source: str = ""
    #: Only recordings of this account id; empty: any.
    account_id: str = ""
    #: How long to keep them, counted from ``received_at``: an ISO 8601 duration
    #: (``P90D``, ``PT12H``; a year counts 365 days, a month 30) or seconds (a number).
    keep: timedelta

    @field_validator("keep")
    @classmethod
    def _positive(cls, keep: timedelta) -> timedelta:
        if keep <= timedelta(0):
            raise ValueError("must be longer than zero")
        return keep


class RetentionSettings(_Section):
    """``[retention]``: deleting recordings after their retention period, and erasures
    (README "Retention, erasure and legal hold")."""

    #: Seconds between retention sweeps (on every instance; each recording is deleted by
    #: one instance).
    sweep_interval: float = Field(300.0, gt=0)
    #: Seconds before the sweeper tries again to delete an object storage refused to
    #: delete (S3 Object Lock).
    retry_interval: float = Field(3600.0, gt=0)
    #: The rules, in order; a recording no rule matches is kept for ever.
    rules: list[RetentionRule] = []
    #: Every erasure is appended (JSON lines, fsynced) to this file, outside the catalog
    #: and the storage, for ``recsink erasures reapply`` after a restore. Keep it with your
    #: compliance records; it holds each erasure's selector (a number, an account, a call).
    erasure_log: Path = Path("var/erasures.jsonl")


def _webhook_secret(secret: SecretStr) -> SecretStr:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 24 to 64 bytes."""
    value = secret.get_secret_value()
    body = value.removeprefix("whsec_")
    try:
        key = base64.b64decode(body, validate=True) if body != value else b""
    except ValueError:
        key = b""
    if not 24 <= len(key) <= 64:
        raise ValueError("must be whsec_ followed by the base64 of 24 to 64 random bytes "
                         "(python -c 'import base64,os; print(\"whsec_\" + "
                         "base64.b64encode(os.urandom(32)).decode())')")
    return secret


#: The events recsink sends (specs/webhooks.md).
WebhookEvent = Literal["recording.completed", "recording.failed", "recording.discarded",
                       "recording.deleted"]


class WebhookEndpoint(_Section):
    """``[[webhooks.endpoints]]``: one receiver of signed events (Standard Webhooks)."""

    #: Where events are POSTed (http:// or https://). Redirects are not followed.
    url: str
    #: The signing secret, ``whsec_`` + base64 of 24-64 random bytes; or ``secrets``,
    #: several (each request carries one signature per secret, so a receiver holding any
    #: of them verifies: rotation without downtime). One of the two is required.
    secret: SecretStr = SecretStr("")
    secrets: list[SecretStr] = []
    #: Event types sent to this endpoint. Empty: every event.
    events: list[WebhookEvent] = []
    #: Only recordings from these sources (kazoo, sinch, laml, sendbird). Empty: every source.
    sources: list[str] = []
    #: Only recordings of these account ids. Empty: every account.
    account_ids: list[str] = []

    @field_validator("url")
    @classmethod
    def _http(cls, url: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+(/\S*)?", url):
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("secret")
    @classmethod
    def _one_secret(cls, secret: SecretStr) -> SecretStr:
        return _webhook_secret(secret) if secret.get_secret_value() else secret

    @field_validator("secrets")
    @classmethod
    def _each_secret(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        return [_webhook_secret(s) for s in secrets]

    @model_validator(mode="after")
    def _some_secret(self) -> WebhookEndpoint:
        if not self.signing_secrets:
            raise ValueError("secret or secrets: an endpoint needs a signing secret")
        return self

    @property
    def signing_secrets(self) -> list[str]:
        """Every secret this endpoint's requests are signed with, ``secret`` first."""
        values = [self.secret, *self.secrets]
        return [s.get_secret_value() for s in values if s.get_secret_value()]


class WebhookSettings(_Section):
    """``[webhooks]``: signed events to downstream systems (README "Webhooks")."""

    #: Seconds before each retry of a failed delivery (after the first attempt, which is
    #: immediate), each with +-20 % jitter; after the last, the delivery is ``failed``.
    #: Svix's schedule (about 28 hours in all).
    retry_schedule: list[float] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000], min_length=1)
    #: Seconds one attempt may take (connect, send, answer) before it counts as failed.
    timeout: float = Field(15.0, gt=0, le=300)
    endpoints: list[WebhookEndpoint] = []
    #: Allow endpoints at link-local addresses (169.254.0.0/16, fe80::/10: where cloud
    #: metadata services answer) and other metadata addresses. Off: such an address in a
    #: URL is refused here, and a name resolving only to such addresses fails each attempt.
    allow_link_local: bool = False

    @model_validator(mode="after")
    def _no_link_local(self) -> WebhookSettings:
        if self.allow_link_local:
            return self
        for n, endpoint in enumerate(self.endpoints):
            host = urlsplit(endpoint.url).hostname or ""
            if forbidden(host):
                raise ValueError(f"webhooks.endpoints.{n}.url: {host} is a link-local or "
                                 "metadata address; set webhooks.allow_link_local to allow it")
        return self

    @field_validator("retry_schedule")
    @classmethod
    def _delays(cls, schedule: list[float]) -> list[float]:
        if any(not 0 <= delay <= 7 * 86400 for delay in schedule):
            raise ValueError("each delay must be between 0 and 604800 seconds")
        return schedule


class UiSettings(_Section):
    """``[ui]``: the operator console at ``/ui/`` (:mod:`recsink.ui`). Operators sign in
    with one of ``api.tokens``; its scopes decide what the console offers."""

    #: Serve the console (its routes are not added otherwise). Needs ``api.tokens``.
    enabled: bool = False
    #: Seconds a sign-in lasts; then the operator signs in again.
    session_ttl: int = Field(8 * 3600, ge=60, le=30 * 86400)
    #: The session cookie's ``Secure`` flag: "auto" sets it when the request came over
    #: https (directly, or ``X-Forwarded-Proto: https`` from a proxy), "always", "never".
    secure_cookie: Literal["auto", "always", "never"] = "auto"
    #: Search results per page (the console pages with a cursor, never an offset).
    page_size: int = Field(50, ge=5, le=500)


class LogSettings(_Section):
    """``[log]``: JSON log lines on stdout."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """The whole recsink configuration; see the module docstring for its sources."""

    model_config = SettingsConfigDict(
        env_prefix="RECSINK_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    catalog: CatalogSettings = CatalogSettings()
    ingest: IngestSettings = IngestSettings()
    auth: AuthSettings = AuthSettings()
    kazoo: KazooSettings = KazooSettings()
    api: ApiSettings = ApiSettings()
    ops: OpsSettings = OpsSettings()
    sinch: SinchSettings = SinchSettings()
    laml: LamlSettings = LamlSettings()
    sendbird: SendbirdSettings = SendbirdSettings()
    fetch: FetchSettings = FetchSettings()
    webhooks: WebhookSettings = WebhookSettings()
    retention: RetentionSettings = RetentionSettings()
    ui: UiSettings = UiSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment wins over it.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _refuse_open_listener(self) -> Settings:
        if not is_loopback(self.server.host) and not (
            self.auth.has_credentials or self.auth.allow_unauthenticated
        ):
            raise ValueError(
                f"auth.allow_unauthenticated: server.host {self.server.host!r} is not a "
                "loopback address and no "
                "credentials are configured (auth.basic, auth.bearer_tokens, auth.url_tokens); "
                "add one, or set auth.allow_unauthenticated = true"
            )
        self.ops.apart_from(self.server)
        if self.ui.enabled and not self.api.tokens:
            raise ValueError("ui.enabled: the console signs operators in with api.tokens; "
                             "configure at least one")
        return self

    def secrets(self) -> list[str]:
        """Every configured secret value, for the log redactor."""
        values = [c.password for c in self.auth.basic]
        values += [t.token for t in self.auth.bearer + self.auth.url + self.api.named]
        secrets = [s.get_secret_value() for s in values if s.get_secret_value()]
        for credentials in [self.storage.s3.credentials,
                            *(b.credentials for b in self.fetch.buckets)]:
            if credentials.get_secret_value():
                secrets += credentials.get_secret_value().split(":")[:2]  # access, secret key
        secrets += [a.secret.get_secret_value() for a in self.sinch.applications]
        secrets += [self.laml.signing_key.get_secret_value(), self.ops.token.get_secret_value()]
        secrets.append(self.sendbird.api_token.get_secret_value())
        if self.sendbird.copy_to is not None:
            secrets += [self.sendbird.copy_to.access_key.get_secret_value(),
                        self.sendbird.copy_to.secret_key.get_secret_value()]
        for azure in self.fetch.azure:
            secrets += [azure.connection_string.get_secret_value(),
                        azure.account_key.get_secret_value(), azure.sas_token.get_secret_value()]
        secrets.append(dsn_password(self.catalog.url.get_secret_value()) or "")
        for endpoint in self.webhooks.endpoints:
            secrets += endpoint.signing_secrets
        return [s for s in secrets if s]


def dsn_password(url: str) -> str | None:
    """The password a PostgreSQL URL (``postgresql://user:pw@host/db``) or key/value DSN
    (``password=pw``) carries, if any."""
    if m := re.search(r"://[^:/@]*:([^@]*)@", url):
        return m[1]
    if m := re.search(r"(?:^|\s)password=(\S*)", url):
        return m[1]
    return None


def mask_dsn(url: str) -> str:
    """A PostgreSQL URL or DSN with its password shown as ``***``."""
    password = dsn_password(url)
    return url.replace(password, "***") if password else url


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def forbidden(address: str) -> bool:
    """Whether a webhook must not be sent to ``address`` (an IP literal) unless
    ``webhooks.allow_link_local``: link-local addresses (169.254.0.0/16 and fe80::/10, where
    cloud metadata services answer), the other well-known metadata addresses, and the
    unspecified address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_link_local or ip.is_unspecified or str(ip) in METADATA_ADDRESSES


#: Cloud metadata services outside the link-local ranges (AWS over IPv6, Alibaba Cloud).
METADATA_ADDRESSES = frozenset({"fd00:ec2::254", "100.100.100.200"})


class ConfigError(Exception):
    """The configuration cannot be used; ``str()`` names every bad key."""


def load_settings(path: Path | None = None) -> Settings:
    """Read the TOML file at ``path`` (if any), apply ``RECSINK_*`` overrides, validate.

    Raises :class:`ConfigError` with one line per problem, each naming its key
    (``storage.disk.root: …``).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    origin = f"{path}: " if path else ""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        # Model-level checks name their key at the start of the message themselves.
        names_key = re.match(r"[a-z0-9_]+(\.[a-z0-9_]+)+: ", msg) is not None
        lines.append(f"{origin}{msg}" if not key or names_key else f"{origin}{key}: {msg}")
    return "\n".join(lines)

