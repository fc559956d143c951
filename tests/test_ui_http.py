"""The operator console over plain HTTP against real ``recsink serve`` processes: off by
default, sign-in redirects and cookie flags, the Content-Security-Policy and no inline
script, CSRF refusals, scopes, and audio answered with byte ranges on disk and moto S3."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from recsink.ui import CSP
from tests.conftest import RunningServer, merge
from tests.s3support import s3_config
from tests.ui_support import ADMIN, READER, UI, Browserless, upload


class Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, style attributes and
    elements, event-handler attributes, and anything loaded from another host."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self._in_script = tag == "script"
        if tag == "script" and not named.get("src"):
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if name in ("src", "href", "action") and value and re.match(r"^(\w+:)?//", value):
                self.problems.append(f"{tag} {name}={value} (another host)")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script text")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_the_console_is_off_by_default(start_server: Callable[..., RunningServer]) -> None:
    """Without ``ui.enabled`` no /ui route exists (404)."""
    server = start_server()
    assert Browserless(server).request("GET", "/ui/").status == 404
    assert Browserless(server).request("GET", "/ui/signin").status == 404


def test_unsigned_requests_go_to_the_sign_in_page(
        start_server: Callable[..., RunningServer]) -> None:
    """Pages, audio and actions without a session answer 303 to /ui/signin; a forged or
    expired-format cookie counts as none."""
    server = start_server(**UI)
    resource, _ = upload(server, "unsigned-1")
    client = Browserless(server)
    for path in ("/ui/", "/ui/overview", f"/ui/recordings/{resource['id']}",
                 f"/ui/recordings/{resource['id']}/audio",
                 f"/ui/recordings/{resource['id']}/download"):
        answer = client.request("GET", path)
        assert (answer.status, answer.headers["Location"]) == (303, "/ui/signin"), path
    client.cookie = "recsink_ui=supervisor:9999999999:" + "0" * 64
    assert client.request("GET", "/ui/").status == 303
    assert client.form(f"/ui/recordings/{resource['id']}/delete", {}).status == 303


def test_sign_in_sets_a_strict_httponly_cookie_and_a_wrong_token_gets_401(
        start_server: Callable[..., RunningServer]) -> None:
    """A right token gets an HttpOnly, SameSite=Strict cookie on Path=/ui (Secure behind
    https); a wrong one 401 and no cookie; the token never reaches the log; sign-out
    clears the cookie."""
    server = start_server(**UI)
    wrong = Browserless(server).form("/ui/signin", {"token": "nope"})
    assert wrong.status == 401
    assert "Set-Cookie" not in wrong.headers
    assert 'type="password"' in wrong.text
    client = Browserless(server)
    client.sign_in(ADMIN)
    flags = [f.strip().lower() for f in client.set_cookie.split(";")]
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "path=/ui" in flags
    assert "secure" not in flags
    behind_proxy = Browserless(server)
    behind_proxy.sign_in(ADMIN, {"X-Forwarded-Proto": "https"})
    assert "secure" in [f.strip().lower() for f in behind_proxy.set_cookie.split(";")]
    assert client.request("GET", "/ui/").status == 200
    out = client.form("/ui/signout", {"csrf": client.csrf})
    assert out.status == 303
    assert 'recsink_ui=""' in out.headers["Set-Cookie"]
    assert [e["token"] for e in server.events("ui.signed_in")] == ["supervisor", "supervisor"]
    assert ADMIN not in server.log_path.read_text()


def test_every_console_page_has_the_csp_and_no_inline_script(
        start_server: Callable[..., RunningServer]) -> None:
    """The sign-in, search, results, overview and recording pages carry the strict CSP,
    nosniff and no-store, and hold no inline script, style or event handler, and nothing
    from another host; the static files carry the CSP too."""
    server = start_server(**UI)
    resource, _ = upload(server, "csp-1")
    client = Browserless(server)
    assert client.request("GET", "/ui/signin").headers["Content-Security-Policy"] == CSP
    client.sign_in(ADMIN)
    pages = ["/ui/signin", "/ui/", "/ui/search?q=csp-1", "/ui/overview",
             f"/ui/recordings/{resource['id']}"]
    for path in pages:
        answer = client.request("GET", path)
        assert answer.status == 200, path
        assert answer.headers["Content-Security-Policy"] == CSP, path
        assert answer.headers["X-Content-Type-Options"] == "nosniff", path
        assert answer.headers["Cache-Control"] == "no-store", path
        parser = Inline()
        parser.feed(answer.text)
        assert parser.problems == [], (path, parser.problems)
    scripts = re.findall(r'<script src="([^"]+)"', client.request("GET", "/ui/").text)
    assert len(scripts) == 2
    for src in scripts:
        answer = client.request("GET", src)
        assert answer.status == 200
        assert answer.headers["Content-Security-Policy"] == CSP


def test_changes_without_the_csrf_token_are_refused_with_403(
        start_server: Callable[..., RunningServer]) -> None:
    """Delete, hold and sign-out without the session's CSRF token (or with another) get
    403 ``csrf`` and change nothing; with it (field or X-CSRF-Token header) they work."""
    server = start_server(**UI)
    resource, _ = upload(server, "csrf-1")
    client = Browserless(server)
    client.sign_in(ADMIN)
    page = f"/ui/recordings/{resource['id']}"
    for fields in ({}, {"csrf": "0" * 32}):
        for action in ("delete", "hold", "release"):
            answer = client.form(f"{page}/{action}", {**fields, "reason": "case 1"})
            assert answer.status == 403, action
            assert b'"csrf"' in answer.body
        assert client.form("/ui/signout", fields).status == 403
    other = Browserless(server)
    other.sign_in(READER)
    assert client.form(f"{page}/delete", {"csrf": other.csrf}).status == 403
    assert "completed" in client.request("GET", page).text
    held = client.form(f"{page}/hold", {"reason": "case 1"},
                       {"X-CSRF-Token": client.csrf})
    assert (held.status, held.headers["Location"]) == (303, page)
    assert "on legal hold" in client.request("GET", page).text
    assert client.form(f"{page}/release", {"csrf": client.csrf}).status == 303
    assert client.form(f"{page}/delete", {"csrf": client.csrf}).status == 303
    assert "status-deleted" in client.request("GET", page).text


def test_a_read_only_session_gets_no_actions_and_403_on_them(
        start_server: Callable[..., RunningServer]) -> None:
    """A read-scoped token's page has no Delete or Hold button, and its POSTs (with the
    right CSRF token) get 403 ``missing_scope``."""
    server = start_server(**UI)
    resource, _ = upload(server, "readonly-1")
    client = Browserless(server)
    client.sign_in(READER)
    page = f"/ui/recordings/{resource['id']}"
    text = client.request("GET", page).text
    assert ">Delete<" not in text
    assert ">Hold<" not in text
    for action in ("delete", "hold"):
        answer = client.form(f"{page}/{action}", {"csrf": client.csrf, "reason": "x"})
        assert answer.status == 403
        assert b"missing_scope" in answer.body


@pytest.fixture(params=["disk", "s3"])
def console(request: pytest.FixtureRequest, start_server: Callable[..., RunningServer],
            tmp_path: Path) -> RunningServer:
    """A recsink with the console on, on disk or on a fresh moto bucket."""
    sections: dict[str, Any] = UI
    if request.param == "s3":
        moto = request.getfixturevalue("moto")
        bucket = request.getfixturevalue("bucket")
        sections = merge(s3_config(bucket, moto.url, spool_dir=str(tmp_path / "spool")), UI)
    return start_server(**sections)


def test_audio_answers_byte_ranges_with_206(console: RunningServer) -> None:
    """The audio route answers a Range with 206, Content-Range, Accept-Ranges and the
    recording's Content-Type (disk and S3 alike); a suffix range too; no Range gets 200 and
    every byte; an unsatisfiable one 416 with ``bytes */size``; each play is logged with
    the token's name, never the token."""
    resource, body = upload(console, "range-1", seconds=1.0)
    client = Browserless(console)
    client.sign_in(ADMIN)
    audio = f"/ui/recordings/{resource['id']}/audio"
    size = len(body)
    middle = client.request("GET", audio, headers={"Range": f"bytes={size // 2}-{size // 2 + 99}"})
    assert middle.status == 206
    assert middle.headers["Content-Range"] == f"bytes {size // 2}-{size // 2 + 99}/{size}"
    assert middle.headers["Accept-Ranges"] == "bytes"
    assert middle.headers["Content-Type"] == "audio/wav"
    assert middle.body == body[size // 2: size // 2 + 100]
    rest = client.request("GET", audio, headers={"Range": f"bytes={size - 10}-"})
    assert (rest.status, rest.body) == (206, body[-10:])
    tail = client.request("GET", audio, headers={"Range": "bytes=-64"})
    assert (tail.status, tail.body) == (206, body[-64:])
    whole = client.request("GET", audio)
    assert (whole.status, whole.body) == (200, body)
    assert whole.headers["Accept-Ranges"] == "bytes"
    beyond = client.request("GET", audio, headers={"Range": f"bytes={size}-"})
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{size}"
    played = console.events("ui.played")
    assert len(played) == 4
    assert {e["token"] for e in played} == {"supervisor"}
    assert ADMIN not in console.log_path.read_text()


def test_download_is_an_attachment_under_the_original_name(console: RunningServer) -> None:
    """The download route answers every byte as an attachment named as uploaded (also in
    ranges), logged ``ui.downloaded`` with the token's name."""
    resource, body = upload(console, "download-1", name="Anruf Müller.wav")
    client = Browserless(console)
    client.sign_in(READER)
    answer = client.request("GET", f"/ui/recordings/{resource['id']}/download")
    assert answer.status == 200
    assert answer.body == body
    disposition = answer.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="Anruf M_ller.wav"')
    assert "filename*=UTF-8''Anruf%20M%C3%BCller.wav" in disposition
    part = client.request("GET", f"/ui/recordings/{resource['id']}/download",
                          headers={"Range": "bytes=0-9"})
    assert (part.status, part.body) == (206, body[:10])
    assert [e["token"] for e in console.events("ui.downloaded")] == ["agent", "agent"]
