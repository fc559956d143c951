"""Outbound webhooks: signed events to downstream systems, from a durable outbox
(specs/webhooks.md: Standard Webhooks, as Svix sends them).

The catalog writes an event in the same transaction as the status change it reports (a
trigger, :mod:`recsink.catalog.outbox`). The :class:`Dispatcher`, on every instance, then

1. **fans events out**: one delivery per endpoint whose filters (``events``, ``sources``,
   ``account_ids``) match, holding the body ``{"type", "timestamp", "data"}`` (``data``:
   the recording resource of ``/v1/recordings/{id}``, under 20 kB) exactly as every attempt
   sends and signs it; a delivery is unique per event and endpoint, so two instances
   fanning out one event make one delivery;
2. **claims due deliveries** under a lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), so each
   attempt goes out from one instance, and POSTs each (``allow_redirects=False``, at most
   ``webhooks.timeout`` seconds) with ``webhook-id`` (the delivery's id, the same on every
   attempt), ``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``
   (``v1,<base64 HMAC-SHA256>`` per configured secret, space-separated, signed with the
   ``standardwebhooks`` package);
3. **records the outcome**: 2xx → ``delivered``; 410 → the endpoint is disabled (until
   ``POST /v1/webhooks/endpoints/{n}/enable``) and the delivery ``failed``; anything else
   (3xx included, a timeout, a connection error) → retried after the next delay of
   ``webhooks.retry_schedule`` (+-20 % jitter; 429, 502, 503 and 504 wait at least their
   ``Retry-After``), ``failed`` after the last.

Delivery is at least once: an instance that dies between a receiver's 2xx and recording
it leaves the lease to expire, and the attempt is made again (same ``webhook-id``).

An endpoint's id is ``ep_`` + 16 hex digits of the SHA-256 of its URL (``-2``, ``-3``, …
for further endpoints with the same URL): reordering ``[[webhooks.endpoints]]`` keeps each
delivery with its URL, and a changed URL is a new endpoint. The API names endpoints by
their index ``n`` in the configuration.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiojobs
from aiohttp.resolver import DefaultResolver
from standardwebhooks import Webhook

from recsink import __version__, logs
from recsink.catalog import Catalog, Recording, iso, utcnow
from recsink.catalog.outbox import Delivery, Event, new_delivery_id
from recsink.config import WebhookEndpoint, WebhookSettings, forbidden
from recsink.errors import RecsinkError
from recsink.headers import retry_after
from recsink.jobs import Worker
from recsink.metrics import Metrics
from recsink.resolver import CheckedResolver

#: The spec's size limit for a body, bytes; a larger one is sent without ``metadata``.
MAX_BODY = 20_000
#: Events fanned out per catalog round trip, and deliveries inserted per statement.
FAN_OUT_BATCH = 100
INSERT_BATCH = 200
#: Attempts sent at once by one instance.
SENDS = 16
#: Seconds between looks at the catalog when nothing woke the dispatcher, at most.
IDLE = 1.0
#: A ``Retry-After`` longer than this many seconds is cut to it.
MAX_RETRY_AFTER = 86400.0
#: Statuses after which a receiver's ``Retry-After`` is honoured.
BACK_OFF = frozenset({429, 502, 503, 504})
JITTER = 0.2


def endpoint_ids(endpoints: Sequence[WebhookEndpoint]) -> list[str]:
    """Each endpoint's id (see the module docstring), in configuration order."""
    seen: Counter[str] = Counter()
    ids = []
    for endpoint in endpoints:
        digest = hashlib.sha256(endpoint.url.encode()).hexdigest()[:16]
        seen[digest] += 1
        ids.append(f"ep_{digest}" + (f"-{seen[digest]}" if seen[digest] > 1 else ""))
    return ids


def where(url: str) -> str:
    """What a log line shows of an endpoint's URL: scheme, host and port (a path or query
    may carry a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass(frozen=True)
class Endpoint:
    """A configured endpoint: its index ``n``, its id, its settings and one signer per
    secret."""

    n: int
    id: str
    settings: WebhookEndpoint
    signers: tuple[Webhook, ...]

    def wants(self, event_type: str, record: Recording) -> bool:
        """Whether the endpoint's filters let ``event_type`` of ``record`` through."""
        settings = self.settings
        return ((not settings.events or event_type in settings.events)
                and (not settings.sources or record.source in settings.sources)
                and (not settings.account_ids or record.account_id in settings.account_ids))

    def sign(self, msg_id: str, when: datetime, body: bytes) -> str:
        """The ``webhook-signature`` value: ``v1,<base64>`` per secret, space-separated."""
        return " ".join(signer.sign(msg_id, when, body) for signer in self.signers)


def event_body(event: Event, record: Recording) -> str:
    """The JSON text sent for ``event`` about ``record`` (under :data:`MAX_BODY` bytes)."""
    data = record.resource()
    payload = {"type": event.type, "timestamp": iso(event.created_at), "data": data}
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if len(text.encode()) > MAX_BODY:  # a sender's metadata is the only open-ended part
        data["metadata"] = {}
        data["metadata_omitted"] = True
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return text



class Dispatcher:
    """Fans events out and sends deliveries; see the module docstring. :meth:`run` is its
    loop (a :class:`~recsink.jobs.Worker` on the delivery queue), :meth:`wake` nudges it
    after a local status change."""

    def __init__(self, settings: WebhookSettings, catalog: Catalog, metrics: Metrics,
                 http: aiohttp.ClientSession, scheduler: aiojobs.Scheduler,
                 new_owner: Callable[[], str]) -> None:
        self.settings = settings
        self.catalog = catalog
        self.metrics = metrics
        self._http = http
        self._new_owner = new_owner
        self.endpoints = [
            Endpoint(n, id_, endpoint, tuple(Webhook(s) for s in endpoint.signing_secrets))
            for n, (id_, endpoint) in enumerate(
                zip(endpoint_ids(settings.endpoints), settings.endpoints, strict=True))]
        self._by_id = {e.id: e for e in self.endpoints}
        self._ids = [e.id for e in self.endpoints]
        #: Seconds a claimed attempt is leased for: the attempt's timeout and a margin.
        self.lease_ttl = settings.timeout + 30.0
        idle = max(0.05, min(IDLE, min(settings.retry_schedule)))
        self.worker = Worker("webhooks", self._claim, self._send, scheduler,
                             limit=SENDS, idle=idle, tick=self._tick)
        self._log = logs.get_logger()

    def wake(self) -> None:
        """A status changed here: look for events now rather than at the next tick."""
        self.worker.wake()

    async def run(self) -> None:
        """Fan out and send until cancelled."""
        await self.worker.run()

    def index(self, endpoint_id: str) -> int | None:
        """The configuration index of the endpoint ``endpoint_id`` (None: not configured)."""
        endpoint = self._by_id.get(endpoint_id)
        return endpoint.n if endpoint is not None else None

    # -- fan-out -----------------------------------------------------------------------------

    async def fan_out(self) -> int:
        """Turn every waiting event into deliveries (none when no endpoint wants it) and
        forget the event; how many deliveries were made."""
        made = 0
        while True:
            events = await self.catalog.events(FAN_OUT_BATCH)
            now = utcnow()
            deliveries = []
            for event, record in events:
                if record is None:
                    continue
                wanted = [e for e in self.endpoints if e.wants(event.type, record)]
                body = event_body(event, record) if wanted else ""
                deliveries += [
                    Delivery(new_delivery_id(), event.id, endpoint.id, event.type,
                             record.id, body, "pending", 0, None, None, None, now, None,
                             now, now) for endpoint in wanted]
            for start in range(0, len(deliveries), INSERT_BATCH):
                made += await self.catalog.fan_out(deliveries[start:start + INSERT_BATCH])
            await self.catalog.drop_events([event.id for event, _ in events])
            if len(events) < FAN_OUT_BATCH:
                return made

    async def _tick(self) -> None:
        await self.fan_out()
        oldest = await self.catalog.oldest_pending()
        lag = (utcnow() - oldest).total_seconds() if oldest is not None else 0.0
        self.metrics.webhook_lag.set(max(0.0, lag))

    # -- sending -----------------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[Delivery]:
        if not self.endpoints:
            return []
        return await self.catalog.claim_deliveries(self._new_owner(), self.lease_ttl, limit,
                                                   self._ids)

    async def _send(self, delivery: Delivery) -> None:
        endpoint = self._by_id[delivery.endpoint]
        started = time.perf_counter()
        status, error, wait = await self.attempt(delivery, endpoint)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        attempts = delivery.attempts + 1
        now = utcnow()
        fields: dict[str, Any] = dict(
            delivery_id=delivery.id, event_id=delivery.event_id, type=delivery.type,
            id=delivery.record_id, endpoint=endpoint.n, endpoint_url=where(endpoint.settings.url),
            attempts=attempts, status=status, elapsed_ms=elapsed_ms)

        def counted(outcome: str) -> None:
            self.metrics.webhook_deliveries.labels(str(endpoint.n), outcome).inc()

        try:
            if status is not None and 200 <= status < 300:
                await self.catalog.finish_attempt(
                    delivery, state="delivered", attempts=attempts, last_status=status,
                    last_error=None, delivered_at=now, next_attempt_at=None)
                counted("delivered")
                self._log.info("webhook.delivered", **fields)
                return
            if status == 410:
                await self.catalog.disable_endpoint(endpoint.id, "the receiver answered 410")
                await self.catalog.finish_attempt(
                    delivery, state="failed", attempts=attempts, last_status=status,
                    last_error="410 Gone: the endpoint is disabled", next_attempt_at=None)
                counted("disabled")
                self.metrics.webhook_endpoints_disabled.labels(str(endpoint.n)).inc()
                self._log.error("webhook.endpoint_disabled", endpoint_id=endpoint.id,
                                detail="the receiver answered 410 Gone; re-enable with POST "
                                       f"/v1/webhooks/endpoints/{endpoint.n}/enable", **fields)
                return
            if error is None:
                error = (f"redirect {status} not followed" if status is not None
                         and 300 <= status < 400 else f"HTTP {status}")
            maximum = delivery.max_attempts or len(self.settings.retry_schedule) + 1
            if attempts >= maximum:
                await self.catalog.finish_attempt(
                    delivery, state="failed", attempts=attempts, last_status=status,
                    last_error=error, next_attempt_at=None)
                counted("failed")
                self._log.error("webhook.failed", error=error, **fields)
                return
            schedule = self.settings.retry_schedule
            delay = schedule[min(attempts, len(schedule)) - 1]
            delay *= random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 (spreading, not secret)
            if status in BACK_OFF and wait is not None:
                delay = max(delay, min(wait, MAX_RETRY_AFTER))
            await self.catalog.finish_attempt(
                delivery, attempts=attempts, last_status=status, last_error=error,
                next_attempt_at=now + timedelta(seconds=delay))
            counted("retry")
            self._log.warning("webhook.retry", error=error, retry_in_s=round(delay, 3),
                              **fields)
        except RecsinkError as exc:  # the catalog is down: the lease expires, tried again
            self._log.warning("webhook.unrecorded", error=exc.reason(), **fields)

    async def attempt(self, delivery: Delivery,
                      endpoint: Endpoint) -> tuple[int | None, str | None, float | None]:
        """POST ``delivery`` to ``endpoint`` once: (HTTP status or None, error or None,
        seconds of ``Retry-After`` or None)."""
        body = delivery.body.encode()
        now = utcnow()
        headers = {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": endpoint.sign(delivery.id, now, body),
            "content-type": "application/json",
            "user-agent": f"recsink/{__version__}",
        }
        try:
            async with self._http.post(
                    endpoint.settings.url, data=body, headers=headers, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=self.settings.timeout)) as response:
                await response.content.read(64 * 1024)  # a little of the answer, then close
                return response.status, None, retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return None, f"no answer within {self.settings.timeout:g} s", None
        except aiohttp.ClientError as exc:
            detail = str(exc).replace(endpoint.settings.url, where(endpoint.settings.url))
            return None, f"{type(exc).__name__}: {detail}", None
        except OSError as exc:
            return None, f"{type(exc).__name__}: {exc.strerror or exc}", None


def _not_forbidden(host: str, port: int, address: str) -> None:
    """Refuse the link-local and metadata addresses :func:`forbidden` names (a receiver's
    DNS name can change to point anywhere; specs/webhooks.md "Guard the sender against
    SSRF"): a name that resolves to nothing else fails the attempt (a connection error)."""
    if forbidden(address):
        raise OSError(f"{host} resolves only to link-local or metadata addresses "
                      "(webhooks.allow_link_local)")


def client_session(settings: WebhookSettings) -> aiohttp.ClientSession:
    """The HTTP client webhooks are sent with: no cookies kept between receivers, and
    (unless ``webhooks.allow_link_local``) no connection to a link-local or metadata
    address."""
    resolver = (DefaultResolver() if settings.allow_link_local
                else CheckedResolver(_not_forbidden))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=resolver),
                                 cookie_jar=aiohttp.DummyCookieJar())

