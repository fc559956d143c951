"""The operator console end to end: headless Debian chromium (Playwright, never a browser
of its own) against a real ``recsink serve``: sign in, search by call id and by phone
number, open, play, seek (206), download (byte-identical), delete with a delete-scoped
token; a read-only token sees no Delete and the API refuses it (403). The run saves the
screenshots the README shows (docs/ui-search.png, docs/ui-recording.png)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, RunningServer, exchange
from tests.ui_support import ADMIN, READER, UI, upload

CHROMIUM = Path("/usr/bin/chromium")
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
sync_api = pytest.importorskip("playwright.sync_api")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)",
                allow_module_level=True)

DOCS = REPO / "docs"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless /usr/bin/chromium."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])
        yield chromium
        chromium.close()


def sign_in(browser: Any, server: RunningServer, token: str) -> Any:
    """A new page signed in with ``token`` (the form's password field), on the search."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 760})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    page.goto(f"{server.base}/ui/")
    assert page.url.endswith("/ui/signin")
    page.fill('input[type="password"]', token)
    page.click('button:text("Sign in")')
    page.wait_for_url(f"{server.base}/ui/")
    return page


def search(page: Any, text: str) -> list[str]:
    """Type ``text`` into the search box, submit, and return the result links."""
    page.fill('input[type="search"]', text)
    page.press('input[type="search"]', "Enter")
    page.wait_for_function("t => document.querySelector('.count').dataset.q === t", arg=text)
    return [a.get_attribute("href") for a in page.locator("a.open").all()]


def api_delete(server: RunningServer, record_id: str, token: str) -> int:
    head = (f"DELETE /v1/recordings/{record_id} HTTP/1.1\r\nhost: x\r\n"
            f"authorization: Bearer {token}\r\ncontent-length: 0\r\n\r\n")
    return exchange(server.port, head.encode()).status


def test_sign_in_search_play_seek_download_and_delete(
        start_server: Callable[..., RunningServer], browser: Any, tmp_path: Path) -> None:
    """Signed in with a delete-scoped token: search by call id and by phone number finds
    the recordings; the recording's page plays, seeks to the middle (the audio answered
    206 with Content-Range), downloads the uploaded bytes under the original name, and
    Delete makes it a tombstone. Screenshots of both pages go to docs/."""
    server = start_server(**UI)
    first, _ = upload(server, "call-ui-1@pbx.example.com", caller="+4930123456",
                      seconds=1.0, freq=330.0)
    target, body = upload(server, "call-ui-2@pbx.example.com", caller="+4930987654",
                          seconds=6.0, freq=440.0)
    original = "call_recording_call-ui-2@pbx.example.com.wav"
    upload(server, "call-ui-3@pbx.example.com", caller="+4989555555", seconds=1.0)
    page = sign_in(browser, server, ADMIN)

    assert search(page, "call-ui-2@pbx.example.com") == [f"/ui/recordings/{target['id']}"]
    assert search(page, "+49 30 98 76 54") == [f"/ui/recordings/{target['id']}"]
    found = search(page, "+4930")
    assert set(found) == {f"/ui/recordings/{target['id']}", f"/ui/recordings/{first['id']}"}
    sync_api.expect(page.locator(".count .total")).to_have_text("2")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "ui-search.png"))

    responses: list[Any] = []
    page.on("response", lambda r: responses.append(r) if "/audio" in r.url else None)
    page.click(f'a[href="/ui/recordings/{target["id"]}"]')
    page.wait_for_url(f"**/ui/recordings/{target['id']}")
    assert page.locator("audio").count() == 1
    page.wait_for_function("() => document.getElementById('waveform').dataset.drawn === 'true'")
    page.wait_for_function("() => document.querySelector('audio').readyState >= 1")
    page.evaluate("() => document.querySelector('audio').play()")
    page.wait_for_function("() => document.querySelector('audio').currentTime > 0")
    duration = page.evaluate("() => document.querySelector('audio').duration")
    assert abs(duration - 6.0) < 0.1
    page.evaluate("a => { a.pause(); a.currentTime = a.duration / 2; }",
                  page.locator("audio").element_handle())
    page.wait_for_function("() => !document.querySelector('audio').seeking")
    assert abs(page.evaluate("() => document.querySelector('audio').currentTime") - 3.0) < 0.5
    ranged = [r for r in responses if r.status == 206]
    assert ranged, [(r.url, r.status) for r in responses]
    assert all(r.headers["accept-ranges"] == "bytes" for r in ranged)
    assert all(r.headers["content-type"] == "audio/wav" for r in ranged)
    assert all(r.headers["content-range"].endswith(f"/{len(body)}") for r in ranged)
    page.screenshot(path=str(DOCS / "ui-recording.png"), full_page=False)

    link = page.locator("a[download]")
    assert link.get_attribute("download") == original
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == original
    saved = tmp_path / "download.wav"
    download.save_as(saved)
    assert saved.read_bytes() == body

    page.on("dialog", lambda dialog: dialog.accept())
    page.click('button:text-is("Delete")')
    sync_api.expect(page.locator("h1 .status")).to_have_text("deleted")
    assert page.locator("audio").count() == 0
    assert page.errors == []
    played = server.events("ui.played")
    assert played
    assert {e["token"] for e in played} == {"supervisor"}
    assert [e["token"] for e in server.events("ui.downloaded")] == ["supervisor"]
    assert server.events("recording.deleted")
    assert ADMIN not in server.log_path.read_text()


def test_a_read_only_token_sees_no_delete_and_the_api_refuses_it(
        start_server: Callable[..., RunningServer], browser: Any) -> None:
    """Signed in with a read-only token, the recording's page has no Delete button (nor
    hold), and the API answers its DELETE with 403."""
    server = start_server(**UI)
    resource, _ = upload(server, "call-ui-ro@pbx.example.com")
    page = sign_in(browser, server, READER)
    assert search(page, "call-ui-ro@pbx.example.com") == [f"/ui/recordings/{resource['id']}"]
    page.click("a.open")
    page.wait_for_url(f"**/ui/recordings/{resource['id']}")
    assert page.locator("audio").count() == 1
    assert page.locator('button:text-is("Delete")').count() == 0
    assert page.locator('button:text-is("Hold")').count() == 0
    assert api_delete(server, resource["id"], READER) == 403
    assert page.errors == []
