"""The recording API (``/v1/recordings``: reading; deletion, legal holds and erasures with
scoped tokens, :mod:`recsink.retention`) and the operations routes (``/healthz``,
``/readyz``, ``/metrics``; who may read them: :func:`_ops_access`)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Awaitable
from typing import Any

from aiohttp import hdrs, web

from recsink import logs, state
from recsink.auth import bearer_matches, matching_token, require_scope
from recsink.catalog import Recording, Status, iso
from recsink.catalog.outbox import DELIVERY_STATES, DeliveryState
from recsink.config import Scope
from recsink.errors import Forbidden, Malformed, NotFound, Unauthorized
from recsink.metrics import CONTENT_TYPE_LATEST
from recsink.retention import parse_selector
from recsink.storage import StorageError
from recsink.webhooks import where

MAX_LIMIT = 1000
#: The operations routes (``[ops]``: their own address and token).
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def _authorize(request: web.Request, scope: Scope = "read") -> str:
    """Admit an API request that needs ``scope``; the name its log lines give the caller.
    ``api.tokens`` as bearer tokens when configured (each its own scopes), else the upload
    credentials with scope ``read`` only (not those bound to accounts: 403
    ``account_not_allowed``). Raises 401 ``unauthorized``, 403 ``missing_scope``."""
    tokens = request.app[state.SETTINGS].api.named
    authorization = request.headers.get(hdrs.AUTHORIZATION)
    auth = request.app[state.AUTH]
    if tokens:
        auth.check_network(request.remote)
        found = matching_token(authorization, tokens)
        if found is None:
            raise Unauthorized("unauthorized", "missing or wrong API token")
        require_scope(found.name, found.scopes, scope)
        return found.name
    if auth.check(request.remote, authorization, [], request.query).accounts is not None:
        # The API lists and describes every account's recordings.
        raise Forbidden("account_not_allowed",
                        "a credential bound to accounts cannot use the recording API; "
                        "configure api.tokens for it")
    if scope != "read":
        raise Forbidden("missing_scope", f"the upload credentials may only read; configure "
                        f"api.tokens with the {scope!r} scope for this")
    return "upload-credentials"


async def list_recordings(request: web.Request) -> web.Response:
    """``GET /v1/recordings?call_id=&recording_id=&status=&limit=``: newest first.
    Answers ``{"recordings": [<recording resource>, …]}``."""
    _authorize(request)
    status = request.query.get("status")
    if status is not None and status not in Status.__members__.values():
        raise Malformed("bad_query", f"status must be one of {[s.value for s in Status]}")
    limit = _limit(request)
    records = await request.app[state.CATALOG].search(
        call_id=request.query.get("call_id"), recording_id=request.query.get("recording_id"),
        status=Status(status) if status else None, limit=limit)
    return web.json_response({"recordings": [_resource(r) for r in records]})


async def get_recording(request: web.Request) -> web.Response:
    """``GET /v1/recordings/{id}``: one recording resource by recsink id (``rec_…``) or by
    the sender's recording id."""
    _authorize(request)
    return web.json_response(_resource(await _find(request)))


async def _find(request: web.Request) -> Recording:
    """The recording ``{id}`` names (recsink's id, or the sender's recording id). Raises
    404 ``not_found``."""
    wanted = request.match_info["id"]
    catalog = request.app[state.CATALOG]
    record = await catalog.get(wanted)
    if record is None:
        matches = await catalog.search(recording_id=wanted, limit=1)
        record = matches[0] if matches else None
    if record is None:
        raise NotFound("not_found", f"no recording {wanted!r}")
    return record


async def delete_recording(request: web.Request) -> web.Response:
    """``DELETE /v1/recordings/{id}`` (scope ``delete``): delete the object and make the
    record a tombstone; 200 with the tombstone (again for a tombstone). 409
    ``legal_hold`` when held, 409 ``object_locked`` when storage refuses (S3 Object Lock),
    503 while another upload or deletion holds it."""
    by = _authorize(request, "delete")
    record = await _find(request)
    tombstone, _ = await request.app[state.RETENTION].delete_logged(record.id, by)
    return web.json_response(_resource(tombstone))


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise Malformed("bad_json", "the body must be a JSON object") from None


async def put_hold(request: web.Request) -> web.Response:
    """``PUT /v1/recordings/{id}/hold`` with ``{"reason": "…"}`` (scope ``hold``): put a
    legal hold on the recording; 200 with the resource (``hold: {reason, since}``). 409
    ``deleted`` for a tombstone."""
    by = _authorize(request, "hold")
    body = await _json_body(request)
    reason = body.get("reason") if isinstance(body, dict) else None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 500:
        raise Malformed("bad_hold", 'send {"reason": "<why, 1 to 500 characters>"}')
    record = await _find(request)
    held = await request.app[state.RETENTION].hold(record.id, reason.strip(), by)
    return web.json_response(_resource(held))


async def delete_hold(request: web.Request) -> web.Response:
    """``DELETE /v1/recordings/{id}/hold`` (scope ``hold``): lift the legal hold; 200 with
    the resource (``hold: null``)."""
    by = _authorize(request, "hold")
    record = await _find(request)
    released = await request.app[state.RETENTION].release_hold(record.id, by)
    return web.json_response(_resource(released))


async def post_erasure(request: web.Request) -> web.Response:
    """``POST /v1/erasures`` with exactly one of ``{"call_id"}``, ``{"account_id"}``,
    ``{"number"}`` (scope ``delete``): delete every matching recording; 202 with
    ``{"id": "era_…", "matched", "deleted", "held": [ids], "failed": [ids]}`` (held ones
    are kept; failed ones could not be deleted now: retry the erasure)."""
    by = _authorize(request, "delete")
    selector, value = parse_selector(await _json_body(request))
    result = await request.app[state.RETENTION].erase(selector, value, by)
    return web.json_response(result.resource(), status=202)


async def list_erasures(request: web.Request) -> web.Response:
    """``GET /v1/erasures?limit=``: erasures, newest first: ``{"erasures": [{"id",
    "selector": {name: value}, "matched", "deleted", "held", "failed", "requested_by",
    "created_at"}, …]}``."""
    _authorize(request)
    found = await request.app[state.CATALOG].erasures(_limit(request))
    return web.json_response({"erasures": found})


def _resource(record: Recording) -> dict[str, Any]:
    """``record``'s resource, its error texts shown as the logs show them (a pull's reason
    may quote its location, which can open the media without authentication)."""
    resource = record.resource()
    for part in (resource, resource["pull"], resource["shipping"]):
        if part is not None and isinstance(part.get("error"), str):
            part["error"] = logs.redact_urls(part["error"])
    return resource


async def list_deliveries(request: web.Request) -> web.Response:
    """``GET /v1/webhooks/deliveries?state=pending|delivered|failed&recording_id=&limit=``:
    webhook deliveries, newest first (``recording_id``: recsink's id or the sender's).
    Answers ``{"deliveries": [<delivery>, …]}``."""
    _authorize(request)
    wanted = request.query.get("state")
    if wanted is not None and wanted not in DELIVERY_STATES:
        raise Malformed("bad_query", f"state must be one of {list(DELIVERY_STATES)}")
    state_: DeliveryState | None = next((s for s in DELIVERY_STATES if s == wanted), None)
    limit = _limit(request)
    catalog = request.app[state.CATALOG]
    record_id = request.query.get("recording_id")
    if record_id is not None and await catalog.get(record_id) is None:
        matches = await catalog.search(recording_id=record_id, limit=1)
        record_id = matches[0].id if matches else record_id
    dispatcher = request.app[state.WEBHOOKS]
    found = await catalog.deliveries(state=state_, record_id=record_id, limit=limit)
    return web.json_response(
        {"deliveries": [d.resource(dispatcher.index(d.endpoint)) for d in found]})


async def retry_delivery(request: web.Request) -> web.Response:
    """``POST /v1/webhooks/deliveries/{id}/retry``: send a delivery again now (a failed or
    delivered one gets one more attempt, same ``webhook-id``); 202 with the delivery."""
    _authorize(request)
    wanted = request.match_info["id"]
    delivery = await request.app[state.CATALOG].retry_delivery(wanted)
    if delivery is None:
        raise NotFound("not_found", f"no webhook delivery {wanted!r}")
    dispatcher = request.app[state.WEBHOOKS]
    dispatcher.wake()
    return web.json_response(delivery.resource(dispatcher.index(delivery.endpoint)),
                             status=202)


async def list_endpoints(request: web.Request) -> web.Response:
    """``GET /v1/webhooks/endpoints``: the configured endpoints (index, id, where, filters)
    and whether each is disabled. Answers ``{"endpoints": [...]}``."""
    _authorize(request)
    disabled = await request.app[state.CATALOG].disabled_endpoints()
    endpoints = []
    for endpoint in request.app[state.WEBHOOKS].endpoints:
        since, reason = disabled.get(endpoint.id, (None, None))
        endpoints.append({
            "n": endpoint.n, "id": endpoint.id, "url": where(endpoint.settings.url),
            "events": endpoint.settings.events, "disabled": endpoint.id in disabled,
            "disabled_at": iso(since), "disabled_reason": reason})
    return web.json_response({"endpoints": endpoints})


async def enable_endpoint(request: web.Request) -> web.Response:
    """``POST /v1/webhooks/endpoints/{n}/enable``: send to endpoint ``n`` (its index in
    ``webhooks.endpoints``) again after a 410 disabled it; its pending deliveries go out."""
    _authorize(request)
    endpoints = request.app[state.WEBHOOKS].endpoints
    n = request.match_info["n"]
    if not n.isdecimal() or int(n) >= len(endpoints):
        raise NotFound("not_found", f"no webhook endpoint {n!r} (0 to {len(endpoints) - 1})")
    endpoint = endpoints[int(n)]
    was_disabled = await request.app[state.CATALOG].enable_endpoint(endpoint.id)
    request.app[state.WEBHOOKS].wake()
    return web.json_response({"n": endpoint.n, "id": endpoint.id, "disabled": False,
                              "was_disabled": was_disabled})


def _limit(request: web.Request) -> int:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise Malformed("bad_query", "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Malformed("bad_query", f"limit must be between 1 and {MAX_LIMIT}")
    return limit


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
    app.router.add_delete("/v1/recordings/{id}", delete_recording)
    app.router.add_put("/v1/recordings/{id}/hold", put_hold)
    app.router.add_delete("/v1/recordings/{id}/hold", delete_hold)
    app.router.add_post("/v1/erasures", post_erasure)
    app.router.add_get("/v1/erasures", list_erasures)
    app.router.add_get("/v1/webhooks/deliveries", list_deliveries)
    app.router.add_post("/v1/webhooks/deliveries/{id}/retry", retry_delivery)
    app.router.add_get("/v1/webhooks/endpoints", list_endpoints)
    app.router.add_post("/v1/webhooks/endpoints/{n}/enable", enable_endpoint)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
