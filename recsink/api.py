"""The read-only recording API (``/v1/recordings``) and the operations routes
(``/healthz``, ``/readyz``, ``/metrics``; who may read them: :func:`_ops_access`)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Awaitable
from typing import Any

from aiohttp import hdrs, web

from recsink import logs, state
from recsink.auth import bearer_matches
from recsink.catalog import Recording, Status
from recsink.errors import Forbidden, Malformed, NotFound, Unauthorized
from recsink.metrics import CONTENT_TYPE_LATEST
from recsink.storage import StorageError

MAX_LIMIT = 1000
#: The operations routes (``[ops]``: their own address and token).
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _authorize(request: web.Request) -> None:
    """``api.tokens`` as bearer tokens when configured, else the upload credentials (not
    those bound to accounts: 403 ``account_not_allowed``)."""
    tokens = [t.get_secret_value() for t in request.app[state.SETTINGS].api.tokens]
    authorization = request.headers.get(hdrs.AUTHORIZATION)
    auth = request.app[state.AUTH]
    if tokens:
        auth.check_network(request.remote)
        if not bearer_matches(authorization, tokens):
            raise Unauthorized("unauthorized", "missing or wrong API token")
        return
    if auth.check(request.remote, authorization, [], request.query).accounts is not None:
        # The API lists and describes every account's recordings.
        raise Forbidden("account_not_allowed",
                        "a credential bound to accounts cannot use the recording API; "
                        "configure api.tokens for it")


async def list_recordings(request: web.Request) -> web.Response:
    """``GET /v1/recordings?call_id=&recording_id=&status=&limit=``: newest first.
    Answers ``{"recordings": [<recording resource>, …]}``."""
    _authorize(request)
    status = request.query.get("status")
    if status is not None and status not in Status.__members__.values():
        raise Malformed("bad_query", f"status must be one of {[s.value for s in Status]}")
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise Malformed("bad_query", "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Malformed("bad_query", f"limit must be between 1 and {MAX_LIMIT}")
    records = await request.app[state.CATALOG].search(
        call_id=request.query.get("call_id"), recording_id=request.query.get("recording_id"),
        status=Status(status) if status else None, limit=limit)
    return web.json_response({"recordings": [_resource(r) for r in records]})


async def get_recording(request: web.Request) -> web.Response:
    """``GET /v1/recordings/{id}``: one recording resource by recsink id (``rec_…``) or by
    the sender's recording id."""
    _authorize(request)
    wanted = request.match_info["id"]
    catalog = request.app[state.CATALOG]
    record = await catalog.get(wanted)
    if record is None:
        matches = await catalog.search(recording_id=wanted, limit=1)
        record = matches[0] if matches else None
    if record is None:
        raise NotFound("not_found", f"no recording {wanted!r}")
    return web.json_response(_resource(record))


def _resource(record: Recording) -> dict[str, Any]:
    """``record``'s resource, its error texts shown as the logs show them (a pull's reason
    may quote its location, which can open the media without authentication)."""
    resource = record.resource()
    for part in (resource, resource["pull"], resource["shipping"]):
        if part is not None and isinstance(part.get("error"), str):
            part["error"] = logs.redact_urls(part["error"])
    return resource


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


def _ops_access(request: web.Request) -> bool:
    """Admit a caller of /readyz or /metrics (:class:`~recsink.config.OpsSettings`: the ops
    token, else open on a loopback ``ops.listen``, else the upload credentials when
    ``[auth]`` has any, else open); True when the caller passed a credential (and may see
    why /readyz is not ready). Raises 401 ``unauthorized``, 403 ``address_not_allowed``."""
    settings = request.app[state.SETTINGS]
    authorization = request.headers.get(hdrs.AUTHORIZATION)
    token = settings.ops.token.get_secret_value()
    if token:
        if not bearer_matches(authorization, [token]):
            raise Unauthorized("unauthorized", "missing or wrong ops token (ops.token)")
        return True
    auth = request.app[state.AUTH]
    if not settings.auth.has_credentials:
        return False
    if settings.ops.on_loopback:
        return auth.match_credentials(authorization, request.query)[0]
    auth.check(request.remote, authorization, [], request.query)
    return True


#: Seconds each readiness check (storage, catalog) may take before it counts as failed.
READY_TIMEOUT = 5.0


async def _problem(check: Awaitable[None]) -> str | None:
    """What is wrong according to ``check`` (None: nothing), within :data:`READY_TIMEOUT`."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await check
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT:g} s"
    except StorageError as exc:
        return str(exc)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


async def readyz(request: web.Request) -> web.Response:
    """Ready: storage is writable (and S3 reachable when configured) and the catalog can be
    written; 503 otherwise. ``{"status": "ready"}``, or ``{"status": "unavailable",
    "problems": {"storage"|"catalog": why}}``, where ``why`` is the reason only for a caller
    who passed a credential (it may name paths and hosts): the others read it in the log's
    ``ready.unavailable`` line."""
    trusted = _ops_access(request)
    found = {"storage": await _problem(request.app[state.STORAGE].check_writable()),
             "catalog": await _problem(request.app[state.CATALOG].check_writable())}
    problems = {part: logs.redact(why) for part, why in found.items() if why is not None}
    if not problems:
        return web.json_response({"status": "ready"})
    logs.get_logger().warning("ready.unavailable", problems=problems)
    if not trusted:
        problems = dict.fromkeys(problems, "unavailable (the reason is in the log: "
                                           "ready.unavailable)")
    return web.json_response({"status": "unavailable", "problems": problems}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition (who may read it: :func:`_ops_access`)."""
    _ops_access(request)
    metrics_ = request.app[state.METRICS]
    if (where := request.app[state.STORAGE].local_root()) is not None:
        with contextlib.suppress(OSError):
            usage = await asyncio.to_thread(shutil.disk_usage, where)
            metrics_.disk_free.set(usage.free)
    body = metrics_.render()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/recordings", list_recordings)
    app.router.add_get("/v1/recordings/{id}", get_recording)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
