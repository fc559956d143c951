"""The operator console at ``/ui/`` (``[ui] enabled = true``): sign in with an API token,
search recordings, play, download, delete and hold them, and an overview of the last day.

Server-rendered pages (aiohttp-jinja2 templates in ``templates/``) with htmx (vendored from
npm by ``ui/vendor.sh`` into ``static/``) for the search's partial updates, one small
script of our own (``static/console.js``: the waveform and confirmations) and one
stylesheet. Every ``/ui`` answer carries a strict Content-Security-Policy (:data:`CSP`):
nothing inline, nothing from another host.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import hdrs, web

from recsink.ui import views

HERE = Path(__file__).resolve().parent
#: Sent with every ``/ui`` answer.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
}


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the security headers on every ``/ui`` answer; pages are
    not cached (they show personal data)."""
    if request.path == "/ui" or request.path.startswith("/ui/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith("/ui/static/"):
            response.headers.setdefault(hdrs.CACHE_CONTROL, "no-store")


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPPermanentRedirect("/ui/")


def add_routes(app: web.Application) -> None:
    """The console's routes, its templates and its static files."""
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(HERE / "templates"),
                         autoescape=True)
    router = app.router
    router.add_get("/ui", _to_console)
    router.add_get("/ui/", views.search)
    router.add_get("/ui/search", views.search)
    router.add_get("/ui/signin", views.signin_form)
    router.add_post("/ui/signin", views.signin)
    router.add_post("/ui/signout", views.signout)
    router.add_get("/ui/overview", views.overview)
    router.add_get("/ui/recordings/{id}", views.recording)
    router.add_get("/ui/recordings/{id}/audio", views.play)
    router.add_get("/ui/recordings/{id}/download", views.download)
    router.add_post("/ui/recordings/{id}/delete", views.delete)
    router.add_post("/ui/recordings/{id}/hold", views.hold)
    router.add_post("/ui/recordings/{id}/release", views.release)
    router.add_static("/ui/static", HERE / "static", append_version=True, name="ui-static")
    app.on_response_prepare.append(_secure_headers)
