"""The console's pages and actions (``/ui/…``); templates in ``recsink/ui/templates``.

Pages need a session (:mod:`recsink.ui.session`; without one, 303 to ``/ui/signin``);
actions are POSTs that need the session's CSRF token and the token's scope (403
``missing_scope`` otherwise), then 303 back to the recording's page.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from recsink import logs, state
from recsink.auth import require_scope
from recsink.catalog import Recording, Status, iso, utcnow
from recsink.catalog.search import Cursor, Filters
from recsink.config import Scope
from recsink.errors import Malformed, NotFound
from recsink.retention import MIN_DIGITS, digits
from recsink.ui import charts, media
from recsink.ui.session import CSRF_FIELD, Session, check_csrf, current, sign_in, sign_out

#: What the search box takes for a phone number rather than an id.
_NUMBER = re.compile(r"^\s*(?:(?:tel|sips?):)?\+?[\d\s().-]+(?:@\S*)?\s*$", re.IGNORECASE)
SIGNIN = "/ui/signin"
SOURCES = ("kazoo", "sinch", "laml", "sendbird")


def _session(request: web.Request) -> Session:
    """The request's session; else redirect (303) to the sign-in page."""
    session = current(request)
    if session is None:
        raise web.HTTPSeeOther(SIGNIN)
    return session


def _page(request: web.Request, template: str, session: Session | None,
          **context: Any) -> web.Response:
    return aiohttp_jinja2.render_template(
        template, request, {"session": session, "csrf_field": CSRF_FIELD, **context})


async def signin_form(request: web.Request) -> web.Response:
    """``GET /ui/signin``: the sign-in form (one ``<input type="password">``)."""
    return _page(request, "signin.html", None, failed=False)


async def signin(request: web.Request) -> web.StreamResponse:
    """``POST /ui/signin`` with ``token``: a session cookie and 303 to the search page;
    401 with the form again for a wrong token (logged ``ui.signin_failed``)."""
    request.app[state.AUTH].check_network(request.remote)
    given = str((await request.post()).get("token", ""))
    response = web.HTTPSeeOther("/ui/")
    session = sign_in(request, response, given) if given else None
    if session is None:
        logs.get_logger().warning("ui.signin_failed", remote=request.remote)
        page = _page(request, "signin.html", None, failed=True)
        page.set_status(401)
        await page.prepare(request)  # sent as it is: not made a JSON error
        return page
    logs.get_logger().info("ui.signed_in", token=session.name, remote=request.remote)
    return response


async def signout(request: web.Request) -> web.StreamResponse:
    """``POST /ui/signout``: clear the cookie; 303 to the sign-in page."""
    session = _session(request)
    await check_csrf(request, session)
    response = web.HTTPSeeOther(SIGNIN)
    sign_out(request, response)
    logs.get_logger().info("ui.signed_out", token=session.name)
    return response


def _when(text: str, name: str) -> datetime | None:
    """A date (``YYYY-MM-DD``, UTC midnight) or date-time from a form field."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise Malformed("bad_query", f"{name} must be a date (YYYY-MM-DD) or a date and "
                        "time") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def filters_of(query: dict[str, str]) -> Filters:
    """The search's filters from its query: ``q`` (the search box: a phone number, else a
    call id, recording id or recsink id), ``call_id``, ``recording_id``, ``account_id``,
    ``number``, ``source``, ``status``, ``from``/``to`` (dates, UTC; ``to`` inclusive).
    Raises :class:`~recsink.errors.Malformed` (``bad_query``)."""
    q = query.get("q", "").strip()
    number = query.get("number", "").strip()
    call_id = query.get("call_id", "").strip() or None
    recording_id = query.get("recording_id", "").strip() or None
    if q and _NUMBER.match(q) and len(digits(q)) >= MIN_DIGITS:
        number = number or q
    elif q:
        if q.startswith("rec_"):
            recording_id = recording_id or q
        else:
            call_id = call_id or q
    if number and len(digits(number)) < MIN_DIGITS:
        raise Malformed("bad_query", f"a phone number needs at least {MIN_DIGITS} digits")
    status = query.get("status", "")
    if status and status not in Status.__members__.values():
        raise Malformed("bad_query", f"status must be one of {[s.value for s in Status]}")
    until = _when(query.get("to", ""), "to")
    if until is not None and len(query.get("to", "")) == 10:
        until += timedelta(days=1)  # a whole day
    return Filters(call_id=call_id, recording_id=recording_id,
                   account_id=query.get("account_id", "").strip() or None,
                   number=digits(number) or None, source=query.get("source", "") or None,
                   status=Status(status) if status else None,
                   since=_when(query.get("from", ""), "from"), until=until)


async def search(request: web.Request) -> web.Response:
    """``GET /ui/`` and ``GET /ui/search``: the search form and a page of results, newest
    first, with the number of matches; ``cursor`` gives the next page. An htmx request
    (``HX-Request``) gets the results fragment only."""
    session = _session(request)
    query = dict(request.query)
    filters = filters_of(query)
    cursor = request.query.get("cursor")
    after = Cursor.decode(cursor) if cursor else None
    catalog = request.app[state.CATALOG]
    size = request.app[state.SETTINGS].ui.page_size
    found, following = await catalog.find(filters, after, size)
    total = await catalog.count(filters)
    rest = {k: v for k, v in query.items() if k != "cursor" and v}
    more = (f"/ui/search?{urlencode({**rest, 'cursor': following.encode()})}"
            if following else None)
    context = {"records": found, "total": total, "more": more, "query": query,
               "statuses": [s.value for s in Status], "sources": SOURCES,
               "deeper": after is not None}
    if request.headers.get("HX-Request") == "true":
        return _page(request, "results.html", session, **context)
    return _page(request, "search.html", session, **context)


async def _record(request: web.Request) -> Recording:
    wanted = request.match_info["id"]
    record = await request.app[state.CATALOG].get(wanted)
    if record is None:
        raise NotFound("not_found", f"no recording {wanted!r}")
    return record


def history(record: Recording) -> list[tuple[str, str | None]]:
    """What the catalog knows of a recording's past, oldest first: (what, when ISO UTC).
    The catalog keeps no status log; these are its timestamps."""
    events: list[tuple[str, datetime | None]] = [
        ("received", record.received_at), ("call started", record.started_at),
        ("call stopped", record.stopped_at), ("on legal hold", record.hold_since),
        (f"deleted ({record.deletion_reason})", record.deleted_at),
        (f"last change: {record.status}", record.updated_at)]
    if record.pull_state:
        events.append((f"pull {record.pull_state} after {record.pull_attempts} attempt(s)",
                       record.next_pull_at if record.pull_state == "pending" else None))
    if record.ship_state:
        events.append((f"shipping {record.ship_state}", record.next_ship_at))
    known = [(what, when) for what, when in events if when is not None]
    known.sort(key=lambda e: e[1] or record.received_at)
    return [(what, iso(when)) for what, when in known]


async def recording(request: web.Request) -> web.Response:
    """``GET /ui/recordings/{id}``: every field of the resource, its history, its webhook
    deliveries, the player (one ``<audio>``), the waveform, the download link and, with
    the scopes, Delete and hold/release."""
    session = _session(request)
    record = await _record(request)
    dispatcher = request.app[state.WEBHOOKS]
    deliveries = [d.resource(dispatcher.index(d.endpoint)) for d in
                  await request.app[state.CATALOG].deliveries(record_id=record.id, limit=50)]
    resource = record.resource()
    for part in (resource, resource["pull"], resource["shipping"]):
        if part is not None and isinstance(part.get("error"), str):
            part["error"] = logs.redact_urls(part["error"])
    playable = record.status is Status.COMPLETED and record.storage_key is not None
    return _page(request, "recording.html", session, record=record, resource=resource,
                 history=history(record), deliveries=deliveries, playable=playable,
                 filename=media.download_name(record))


async def play(request: web.Request) -> web.StreamResponse:
    """``GET /ui/recordings/{id}/audio``: the audio, inline, with ranges (logged
    ``ui.played``)."""
    session = _session(request)
    return await media.serve(request, await _record(request), attachment=False,
                             who=session.name)


async def download(request: web.Request) -> web.StreamResponse:
    """``GET /ui/recordings/{id}/download``: the audio as an attachment under its original
    name (logged ``ui.downloaded``)."""
    session = _session(request)
    return await media.serve(request, await _record(request), attachment=True,
                             who=session.name)


async def _acting(request: web.Request, scope: Scope) -> tuple[Session, Recording]:
    session = _session(request)
    await check_csrf(request, session)
    require_scope(session.name, session.scopes, scope)
    return session, await _record(request)


def _back(record: Recording) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/ui/recordings/{record.id}")


async def delete(request: web.Request) -> web.StreamResponse:
    """``POST /ui/recordings/{id}/delete`` (scope ``delete``): as ``DELETE
    /v1/recordings/{id}``; 303 to the (now tombstone's) page."""
    session, record = await _acting(request, "delete")
    await request.app[state.RETENTION].delete_logged(record.id, session.name)
    return _back(record)


async def hold(request: web.Request) -> web.StreamResponse:
    """``POST /ui/recordings/{id}/hold`` with ``reason`` (scope ``hold``)."""
    session, record = await _acting(request, "hold")
    reason = str((await request.post()).get("reason", "")).strip()
    if not reason or len(reason) > 500:
        raise Malformed("bad_hold", "a hold needs a reason (1 to 500 characters)")
    await request.app[state.RETENTION].hold(record.id, reason, session.name)
    return _back(record)


async def release(request: web.Request) -> web.StreamResponse:
    """``POST /ui/recordings/{id}/release`` (scope ``hold``): lift the legal hold."""
    session, record = await _acting(request, "hold")
    await request.app[state.RETENTION].release_hold(record.id, session.name)
    return _back(record)


async def overview(request: web.Request) -> web.Response:
    """``GET /ui/overview``: the last 24 hours as charts (recordings per hour and per
    source, failures per hour) and the backlogs (pending pulls, webhook deliveries)."""
    session = _session(request)
    catalog = request.app[state.CATALOG]
    now = utcnow()
    counts = await catalog.activity(now - timedelta(hours=24))
    backlog = {"pending pulls": await catalog.pending("pull"),
               "webhook backlog": await catalog.delivery_backlog()}
    return _page(request, "overview.html", session,
                 **charts.overview(counts, backlog, now))
