"""Claims: which recsink instance stores a recording, decided in the shared bucket itself.

Several instances behind one load balancer share a bucket but not a catalog, so the bucket
arbitrates. Before an instance stores a recording it writes a small claim object,
``<prefix>/.recsink/claims/<sha256 of the idempotency key>.json``, with ``If-None-Match: *``:
exactly one writer succeeds (S3 answers the others 412, or 409 ConditionalRequestConflict).

* The winner streams the recording, refreshing the claim every ``claim_refresh`` seconds
  (a conditional re-write on the claim's ETag), and when the object is complete records its
  key in the claim (``settle``) or deletes the claim if the upload failed (``release``).
* A loser reads the claim. If it names a stored object that exists, the recording is a
  duplicate and the loser answers 200 with it. If the claim was not refreshed for
  ``claim_ttl`` seconds its instance died; the loser takes it over with a conditional
  re-write (one taker wins). Otherwise the loser waits, up to ``claim_wait`` seconds, for
  the object to appear or the claim to go; then it answers 503 with Retry-After. It never
  answers 200 for a recording that is not stored yet: if that upload then failed, the PBX
  would not retry and the recording would be lost.

Claims are tiny, which matters on moto, whose conditional writes race for large bodies
(specs/s3.md §1). Google Cloud Storage gets generation preconditions instead of ETags.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from recsink import logs
from recsink.storage import ClaimBusy, Existing, StorageError
from recsink.storage.s3client import (
    INTERNAL_PREFIX,
    S3_ERRORS,
    as_storage_error,
    gcs_precondition,
    is_conflict,
    is_missing,
)

if TYPE_CHECKING:
    from recsink.storage.s3 import S3Storage


@dataclass(frozen=True)
class _Seen:
    """A claim as read back: its version token, state, object key, writer and age (s)."""

    token: str
    state: str
    key: str | None
    instance: str
    age: float


class S3Claim:
    """A claim this instance holds; see the module docstring."""

    def __init__(self, claims: Claims, object_key: str, token: str, idempotency_key: str) -> None:
        self._claims = claims
        self._object_key = object_key
        self._token = token
        self._idempotency_key = idempotency_key
        self.lost = False
        claims.held.add(object_key)
        self._heartbeat = asyncio.create_task(self._refresh_forever())

    def _body(self, state: str, key: str | None = None) -> bytes:
        return self._claims.body(self._idempotency_key, state, key)

    async def _refresh_forever(self) -> None:
        log = logs.get_logger()
        while True:
            await asyncio.sleep(self._claims.settings.claim_refresh)
            try:
                self._token = await self._claims.put(
                    self._object_key, self._body("uploading"), if_match=self._token)
            except S3_ERRORS as exc:
                if is_conflict(exc):
                    self.lost = True
                    log.warning("claim.lost", idempotency_key=self._idempotency_key)
                    return
                log.warning("claim.refresh_failed", error=str(exc))

    async def _end(self, body: bytes | None) -> None:
        """Stop refreshing and settle (``body``) or release (None) the claim. The claim
        counts as held until the write is done (or queued for retry): a request of this
        instance reading the claim meanwhile must wait, not take it over."""
        self._heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._heartbeat
        try:
            if not self.lost:
                await self._claims.write(self._object_key, self._token, body)
        finally:
            self._claims.held.discard(self._object_key)

    async def settle(self, key: str) -> None:
        await self._end(self._body("stored", key))

    async def release(self) -> None:
        await self._end(None)


class Claims:
    """Claim objects in ``storage``'s bucket, written by instance ``instance``."""

    def __init__(self, storage: S3Storage, instance: str) -> None:
        self.storage = storage
        self.settings = storage.settings
        self.instance = instance
        #: Claim writes that failed (S3 unreachable), retried by :meth:`retry_pending`:
        #: object key -> (our version token, the new body, or None to delete).
        self.pending: dict[str, tuple[str, bytes | None]] = {}
        #: Claims held by uploads running in this process.
        self.held: set[str] = set()

    async def write(self, object_key: str, token: str, body: bytes | None) -> None:
        """Settle (``body``) or release (None) a claim this instance holds. When S3 does not
        answer, keep the write for :meth:`retry_pending`: an unsettled claim would let
        another instance store the recording again once it expires, an unreleased one would
        block its retries for ``claim_ttl``."""
        try:
            if body is None:
                await self.storage.client.delete_object(
                    Bucket=self.storage.destination.bucket, Key=object_key)
            else:
                await self.put(object_key, body, if_match=token)
            self.pending.pop(object_key, None)
        except S3_ERRORS as exc:
            if is_conflict(exc):  # taken over meanwhile: no longer ours to write
                self.pending.pop(object_key, None)
                return
            self.pending[object_key] = (token, body)
            logs.get_logger().warning("claim.write_failed", settle=body is not None,
                                      error=str(exc))

    async def retry_pending(self) -> None:
        """Apply the claim writes that failed, unless someone re-wrote the claim since."""
        for object_key, (token, body) in list(self.pending.items()):
            try:
                seen = await self._read(object_key)
            except StorageError:
                return  # still unreachable
            if seen is None or seen.token != token:
                self.pending.pop(object_key, None)  # gone, or taken over meanwhile
                continue
            await self.write(object_key, token, body)

    def object_key(self, idempotency_key: str) -> str:
        digest = hashlib.sha256(idempotency_key.encode()).hexdigest()
        return self.storage.destination.object_key(f"{INTERNAL_PREFIX}/claims/{digest}.json")

    def body(self, idempotency_key: str, state: str, key: str | None) -> bytes:
        return json.dumps({"idempotency_key": idempotency_key, "state": state, "key": key,
                           "instance": self.instance}).encode()

    async def claim(self, idempotency_key: str) -> S3Claim | Existing:
        """Claim ``idempotency_key``; see the module docstring. Raises
        :class:`~recsink.storage.ClaimBusy`, and :class:`~recsink.storage.s3.Unreachable`
        when S3 does not answer."""
        object_key = self.object_key(idempotency_key)
        body = self.body(idempotency_key, "uploading", None)
        deadline = time.monotonic() + self.settings.claim_wait
        delay = 0.2
        retried = False
        while True:
            try:
                token = await self.put(object_key, body, if_none_match=True)
                return S3Claim(self, object_key, token, idempotency_key)
            except S3_ERRORS as exc:
                if not is_conflict(exc):
                    raise as_storage_error(exc, "claim") from exc
            if object_key in self.pending and not retried:
                # This instance's settle or release of it failed earlier: finish that first.
                retried = True
                await self.write(object_key, *self.pending[object_key])
                continue
            seen = await self._read(object_key)
            if seen is None:
                continue  # released meanwhile: try again at once
            if seen.key is not None and (meta := await self.storage.head(seen.key)) is not None:
                return Existing(seen.key, meta)
            mine_but_idle = (seen.instance == self.instance and object_key not in self.held
                             and object_key not in self.pending)
            if seen.state == "stored" or seen.age > self.settings.claim_ttl or mine_but_idle:
                # Abandoned (its instance stopped refreshing, or it is this instance's and no
                # upload here holds it or has a write pending) or naming a vanished object.
                try:
                    token = await self.put(object_key, body, if_match=seen.token)
                    logs.get_logger().info("claim.taken_over", idempotency_key=idempotency_key,
                                           age_s=round(seen.age, 1))
                    return S3Claim(self, object_key, token, idempotency_key)
                except S3_ERRORS as exc:
                    if not is_conflict(exc):
                        raise as_storage_error(exc, "claim") from exc
                    continue
            if time.monotonic() >= deadline:
                raise ClaimBusy("another recsink instance is storing this recording",
                                retry_after=max(5, round(self.settings.claim_refresh)))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def settle_recovered(self, idempotency_key: str, key: str) -> None:
        """After a restart, settle the claim of a recording found committed at ``key`` whose
        claim the stopped process left ``uploading`` (a crash between the commit and the
        settle): otherwise another instance would take it over after ``claim_ttl`` and store
        a second copy. A claim already settled, or gone, is left as it is. Raises
        :class:`~recsink.storage.StorageError`."""
        object_key = self.object_key(idempotency_key)
        try:
            seen = await self._read(object_key)
            if seen is None or seen.key is not None:
                return
            await self.put(object_key, self.body(idempotency_key, "stored", key),
                           if_match=seen.token)
        except S3_ERRORS as exc:
            if not is_conflict(exc):  # rewritten meanwhile: whoever did knows better
                raise as_storage_error(exc, "settling a claim") from exc

    async def put(
        self, object_key: str, body: bytes, *, if_none_match: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Write a claim conditionally; return its version token (ETag, or the generation
        on Google Cloud Storage)."""
        storage = self.storage
        gcs = storage.destination.scheme == "gs"
        kwargs: dict[str, Any] = {}
        if if_none_match:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None and not gcs:
            kwargs["IfMatch"] = if_match
        reset = gcs_precondition.set(if_match if gcs else None)
        try:
            response = await storage.client.put_object(
                Bucket=storage.destination.bucket, Key=object_key, Body=body,
                ContentType="application/json", **kwargs)
        finally:
            gcs_precondition.reset(reset)
        return self._token(response)

    def _token(self, response: Mapping[str, Any]) -> str:
        """A PutObject or GetObject response's version token: the ETag, or the generation
        on Google Cloud Storage."""
        if self.storage.destination.scheme == "gs":
            return str(response["ResponseMetadata"].get("HTTPHeaders", {}).get(
                "x-goog-generation"))
        return str(response["ETag"])

    async def _read(self, object_key: str) -> _Seen | None:
        storage = self.storage
        try:
            response = await storage.client.get_object(
                Bucket=storage.destination.bucket, Key=object_key)
            async with response["Body"] as stream:
                raw = await stream.read()
        except S3_ERRORS as exc:
            if is_missing(exc):
                return None
            raise as_storage_error(exc, "reading a claim") from exc
        headers = response["ResponseMetadata"].get("HTTPHeaders", {})
        now = (parsedate_to_datetime(headers["date"]) if "date" in headers
               else datetime.now(UTC))
        age = (now - response["LastModified"]).total_seconds()
        token = self._token(response)
        try:
            claim = json.loads(raw)
        except ValueError:
            claim = {}
        return _Seen(token, str(claim.get("state", "")), claim.get("key"),
                     str(claim.get("instance", "")), age)
