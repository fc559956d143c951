"""Sendbird Calls Platform API: the few requests recsink makes (specs/sendbird.md §2, §3).

Every request carries ``Api-Token: <master API token>`` and goes to ``sendbird.api_url``
(default ``https://api-{application_id}.calls.sendbird.com``). That URL is operator
configuration, not something a webhook names, so the ``fetch.allow`` egress policy does not
apply to it.

Answers are parsed tolerantly where the spec marks their shape inferred ([I]): unknown
fields are ignored, and the call or room object is accepted at the top level or under
``call`` / ``direct_call`` / ``room``. Errors (§3 [I]): a 429 raises :class:`RateLimited`
with its ``Retry-After`` (seconds or an HTTP date), a 404 :class:`NotYet` (a call that just
ended may not be there yet), anything else :class:`ApiError`. No error text quotes the
token; Sendbird's own error ``message`` is kept out too (only its status and ``code``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from recsink.config import SendbirdCopy, SendbirdSettings
from recsink.errors import RecsinkError
from recsink.headers import retry_after

#: Calls asked for per page of ``GET /v1/direct_calls``.
PAGE_SIZE = 100
#: Pages read per listing at most (a runaway ``next`` loop stops here).
MAX_PAGES = 1000
#: Largest answer body read, bytes.
MAX_ANSWER_BYTES = 8 * 1024 * 1024


class ApiError(RecsinkError):
    """A Platform API request failed: no answer, or an error status (``status``, None
    when there was no answer)."""

    def __init__(self, detail: str, status: int | None = None,
                 code: str = "sendbird_api") -> None:
        super().__init__(code, detail)
        self.status = status


class NotYet(ApiError):
    """404: the call or room is not there (yet)."""


class RateLimited(ApiError):
    """429: ask again no earlier than ``retry_after`` seconds from now (None: the answer
    named no time)."""

    def __init__(self, detail: str, retry_after: float | None) -> None:
        super().__init__(detail, 429, "sendbird_rate_limited")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Copied:
    """Where the copy API put a recording: ``bucket`` and object ``key``."""

    bucket: str
    key: str


def unwrap(answer: Any, *names: str) -> dict[str, Any]:
    """The object under the first of ``names`` that holds one, else ``answer`` itself
    (specs/sendbird.md: envelopes [I]); {} for anything that is not an object."""
    if not isinstance(answer, dict):
        return {}
    for name in names:
        inner = answer.get(name)
        if isinstance(inner, dict):
            return inner
    return answer



class PlatformApi:
    """The Platform API of one Sendbird application, over ``session``."""

    def __init__(self, settings: SendbirdSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.base = settings.base_url
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)

    async def direct_call(self, call_id: str) -> dict[str, Any]:
        """``GET /v1/direct_calls/{call_id}``: the call object. Raises :class:`ApiError`."""
        answer = await self._request("GET", f"/v1/direct_calls/{quote(call_id, safe='')}")
        return unwrap(answer, "call", "direct_call")

    async def room(self, room_id: str) -> dict[str, Any]:
        """``GET /v1/rooms/{room_id}``: the room object. Raises :class:`ApiError`."""
        answer = await self._request("GET", f"/v1/rooms/{quote(room_id, safe='')}")
        return unwrap(answer, "room")

    async def direct_calls(self, start_ts: int, end_ts: int) -> AsyncIterator[dict[str, Any]]:
        """``GET /v1/direct_calls?limit=&start_ts=&end_ts=&next=`` (Unix seconds), every
        page: each call object. Raises :class:`ApiError`."""
        token = ""
        for _ in range(MAX_PAGES):
            params = {"limit": str(PAGE_SIZE), "start_ts": str(start_ts),
                      "end_ts": str(end_ts)}
            if token:
                params["next"] = token
            answer = await self._request("GET", "/v1/direct_calls", params=params)
            calls = answer.get("calls") if isinstance(answer, dict) else None
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    yield unwrap(call, "call", "direct_call")
            following = answer.get("next") if isinstance(answer, dict) else None
            if not isinstance(following, str) or not following or following == token:
                return
            token = following

    async def copy(self, recording_id: str, target: SendbirdCopy) -> Copied:
        """``POST /v1/cloud-recordings/{recording_id}/copy`` into ``target``; where the
        copy is. Raises :class:`ApiError` (a final one, ``sendbird_copy_answer``, when the
        answer names no object key)."""
        body: dict[str, str] = {
            "access_key": target.access_key.get_secret_value(),
            "secret_key": target.secret_key.get_secret_value(),
            "bucket": target.bucket, "region": target.region}
        if target.directory:
            body["recording_file_directory"] = target.directory
        answer = await self._request(
            "POST", f"/v1/cloud-recordings/{quote(recording_id, safe='')}/copy", json=body)
        found = unwrap(answer, "cloud_recording", "recording")
        key = found.get("key") or found.get("object_key")
        bucket = found.get("bucket") or target.bucket
        if not isinstance(key, str) or not key or not isinstance(bucket, str):
            raise ApiError("the copy API's answer names no object key",
                           code="sendbird_copy_answer")
        return Copied(bucket, key.lstrip("/"))

    async def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       json: dict[str, Any] | None = None) -> Any:
        headers = {"Api-Token": self.settings.api_token.get_secret_value(),
                   "Accept": "application/json"}
        what = f"{method} {path.split('/copy')[0] if '/copy' in path else path}"
        try:
            async with self._session.request(method, self.base + path, params=params,
                                             json=json, headers=headers,
                                             timeout=self._timeout) as response:
                raw = await response.content.read(MAX_ANSWER_BYTES + 1)
                status = response.status
                wait = response.headers.get("Retry-After")
        except TimeoutError:
            raise ApiError(f"{what}: no answer within sendbird.request_timeout "
                           f"({self.settings.request_timeout:g} s)") from None
        except aiohttp.ClientError as exc:
            raise ApiError(f"{what}: cannot reach the Platform API "
                           f"({type(exc).__name__})") from None
        if status == 429:
            raise RateLimited(f"{what}: 429 Too Many Requests", retry_after(wait))
        if status == 404:
            raise NotYet(f"{what}: 404 (not there yet)", 404)
        answer = _json(raw)
        if status >= 400 or len(raw) > MAX_ANSWER_BYTES:
            code = answer.get("code") if isinstance(answer, dict) else None
            raise ApiError(f"{what}: HTTP {status}"
                           + (f" (Sendbird code {code})" if isinstance(code, int) else ""),
                           status)
        if answer is None:
            raise ApiError(f"{what}: the answer is not JSON", status)
        return answer


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None
