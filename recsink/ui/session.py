"""Console sessions: sign-in with an API token, the session cookie, and CSRF tokens.

The cookie (``recsink_ui``) holds ``<token name>:<expiry, Unix seconds>:<MAC>``, the MAC an
HMAC-SHA256 keyed with the API token's own value. Nothing is stored server-side, so a
session works on every instance of a fleet that has the same ``api.tokens``, and each
request checks the token again: removing or changing a token in the configuration ends
its sessions. The token itself never leaves the sign-in request (nor reaches a log line).

Every change (POST) must carry the session's CSRF token (an HMAC of the session with the
same key), in the ``X-CSRF-Token`` header (htmx sends it, ``hx-headers`` on ``<body>``)
or the ``csrf`` form field; the cookie is also ``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from aiohttp import web

from recsink import state
from recsink.auth import named_token
from recsink.config import ApiToken, Scope, UiSettings
from recsink.errors import Forbidden

COOKIE = "recsink_ui"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class Session:
    """A signed-in operator: the API token's name and scopes; ``expires``: Unix seconds."""

    name: str
    scopes: frozenset[Scope]
    expires: int
    csrf: str

    def may(self, scope: Scope) -> bool:
        return scope in self.scopes


def _mac(token: ApiToken, purpose: str, expires: int) -> str:
    key = token.token.get_secret_value().encode()
    message = f"{purpose}|{token.name}|{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _session(token: ApiToken, expires: int) -> Session:
    return Session(token.name, frozenset(token.scopes), expires,
                   _mac(token, "csrf", expires)[:32])


def sign_in(request: web.Request, response: web.StreamResponse, given: str) -> Session | None:
    """Check ``given`` against ``api.tokens`` (constant time, every token compared); when
    one matches and has the ``read`` scope, set the session cookie on ``response`` and
    return the session; None otherwise."""
    settings = request.app[state.SETTINGS]
    found = named_token(given, settings.api.named)
    if found is None or "read" not in found.scopes:
        return None
    expires = int(time.time()) + settings.ui.session_ttl
    value = f"{found.name}:{expires}:{_mac(found, 'session', expires)}"
    response.set_cookie(COOKIE, value, max_age=settings.ui.session_ttl, path="/ui",
                        httponly=True, samesite="Strict",
                        secure=_secure(request, settings.ui))
    return _session(found, expires)


def sign_out(request: web.Request, response: web.StreamResponse) -> None:
    """Clear the session cookie."""
    response.del_cookie(COOKIE, path="/ui", httponly=True, samesite="Strict",
                        secure=_secure(request, request.app[state.SETTINGS].ui))


def current(request: web.Request) -> Session | None:
    """The session the request's cookie carries, if it is valid, unexpired, and its token
    is still configured; None otherwise."""
    value = request.cookies.get(COOKIE, "")
    name, _, rest = value.partition(":")
    expiry, _, mac = rest.partition(":")
    if not expiry.isdecimal() or int(expiry) <= time.time():
        return None
    for token in request.app[state.SETTINGS].api.named:
        if token.name == name and "read" in token.scopes:
            if hmac.compare_digest(mac.encode(), _mac(token, "session", int(expiry)).encode()):
                return _session(token, int(expiry))
            return None
    return None


async def check_csrf(request: web.Request, session: Session) -> None:
    """Raise 403 ``csrf`` unless the request carries ``session``'s CSRF token (header or
    form field)."""
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type == "application/x-www-form-urlencoded":
        given = str((await request.post()).get(CSRF_FIELD, ""))
    if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise Forbidden("csrf", "this change needs the console's CSRF token; reload the page")


def _secure(request: web.Request, settings: UiSettings) -> bool:
    if settings.secure_cookie != "auto":
        return settings.secure_cookie == "always"
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"
