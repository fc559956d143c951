"""Prometheus metrics (prometheus-client), one registry per application instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    """The counters ingest and the HTTP layer update; :meth:`render` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.uploads = Counter(
            "recsink_uploads", "Upload requests by source and result "
            "(stored, duplicate, discarded, rejected, failed).",
            ["source", "result"], registry=self.registry)
        self.bytes_received = Counter(
            "recsink_received_bytes", "Body bytes received by ingest, by source.",
            ["source"], registry=self.registry)
        self.upload_seconds = Histogram(
            "recsink_upload_duration_seconds", "Time from request to answer for uploads.",
            ["source"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.in_flight = Gauge(
            "recsink_uploads_in_flight", "Uploads being received now.",
            registry=self.registry)
        self.storage_errors = Counter(
            "recsink_storage_errors", "Storage operations that failed.",
            registry=self.registry)
        self.s3_abort_failures = Counter(
            "recsink_s3_abort_failures", "Multipart uploads whose abort failed (retried at "
            "the next start; the bucket's lifecycle rule is the last resort).",
            registry=self.registry)
        self.pulls_pending = Gauge(
            "recsink_pulls_pending", "Recordings waiting to be pulled from a platform's storage.",
            registry=self.registry)
        self.disk_free = Gauge(
            "recsink_disk_free_bytes", "Free bytes on the filesystem recsink writes to "
            "(storage root, or the S3 spool), measured at scrape time.",
            registry=self.registry)
        self.spool_pending = Gauge(
            "recsink_spool_pending", "Recordings in the local spool waiting for S3.",
            registry=self.registry)

        self.connections_open = Gauge(
            "recsink_connections_open", "Client connections open now (server.max_connections "
            "at most).", registry=self.registry)
        self.connections_refused = Counter(
            "recsink_connections_refused", "Connections closed as soon as accepted because "
            "server.max_connections were open.", registry=self.registry)
        self.accept_errors = Counter(
            "recsink_accept_errors", "Connections the operating system could not hand over "
            "(accept() failed: no file descriptor or memory left); they wait in the listen "
            "backlog.", registry=self.registry)

        self.webhook_deliveries = Counter(
            "recsink_webhook_deliveries", "Webhook delivery attempts by endpoint (its index "
            "in webhooks.endpoints) and outcome (delivered, retry, failed: the last attempt "
            "failed, disabled: the receiver answered 410).",
            ["endpoint", "outcome"], registry=self.registry)
        self.webhook_endpoints_disabled = Counter(
            "recsink_webhook_endpoints_disabled", "Webhook endpoints disabled because the "
            "receiver answered 410 Gone, by endpoint.", ["endpoint"], registry=self.registry)
        self.webhook_lag = Gauge(
            "recsink_webhook_outbox_lag_seconds", "Age of the oldest webhook event not yet "
            "delivered (a pending delivery or an event not yet fanned out); 0 when none "
            "waits.", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
