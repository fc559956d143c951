"""Configured secrets never reach the log in any encoding: requests that carry every secret
of ``hostile_config`` raw, percent-encoded and Base64-encoded (right and wrong credentials,
tokens in the path and the query, Basic, malformed heads that quote them), then the whole log
searched for every form (``secret_leaks``; the module fixture searches it again at the end)."""

from __future__ import annotations

import base64
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile import strategies as hs
from tests.hostile.support import (
    BASIC_PASSWORD,
    BASIC_USER,
    BEARER,
    SECRETS,
    SPECIAL_BASIC,
    SPECIAL_PASSWORD,
    SPECIAL_TOKEN,
    SPECIAL_USER,
    URL_TOKEN,
    Hostile,
    head,
    request,
    scaled,
    secret_forms,
    secret_leaks,
    unique,
)

#: Secrets that travel in URLs (tokens) and in Authorization headers.
URL_SECRETS = [URL_TOKEN, SPECIAL_TOKEN, BEARER, BASIC_PASSWORD, SPECIAL_PASSWORD]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def encodings(secret: str) -> list[str]:
    """``secret`` raw and in each URL encoding a client may use (raw only where it is a
    valid target character sequence)."""
    forms = [quote(secret, safe=""), quote(secret, safe="").lower(), quote_plus(secret),
             quote(secret)]
    return forms + ([secret] if all(c not in secret for c in " ?#%") else [])


@pytest.mark.parametrize("secret", URL_SECRETS)
def test_tokens_in_urls_never_reach_the_log(hostile: Hostile, secret: str) -> None:
    """Uploads, probes and API calls carrying a secret in the path or the query, in every
    encoding, with right and wrong neighbours, leave no form of it in the log."""
    for form in encodings(secret):
        uid = unique()
        for target in (
            f"/kazoo/{form}/call_recording_{uid}.wav?recording_id=r-{uid}",
            f"/kazoo/{form}x/call_recording_{uid}.wav",
            f"/kazoo/{form}/{form}/nothing-to-see",
            f"/kazoo/call_recording_{uid}.wav?token={form}&recording_id=r-{uid}",
            f"/kazoo/call_recording_{uid}.wav?token={form}x",
            f"/kazoo/nothing?token={form}&recording={form}",
            f"/v1/recordings?call_id={form}&token={form}",
            f"/v1/recordings/{form}",
            f"/readyz?token={form}", f"/metrics?token={form}x",
        ):
            for method in ("PUT", "GET", "DELETE"):
                body = hs.WAV if method == "PUT" else b""
                hostile.exchange(request(method, target, body))
        # Over-long and malformed heads, which the parser quotes in its refusal.
        hostile.exchange(head("GET", f"/kazoo/{form}/" + "a" * 9000))
        hostile.exchange(head("GET", f"/kazoo/{form}", [("host", "x"), ("x-token", form),
                                                          ("bad\x01", form)]))
    assert not secret_leaks(hostile.server.log_path)


@pytest.mark.parametrize("authorization", [
    basic(BASIC_USER, BASIC_PASSWORD), basic(BASIC_USER, BASIC_PASSWORD + "x"),
    basic("someone", BASIC_PASSWORD), SPECIAL_BASIC, basic(SPECIAL_USER, SPECIAL_PASSWORD[:-1]),
    basic("x", SPECIAL_PASSWORD), f"Bearer {BEARER}", f"Bearer {BEARER}x",
    f"Bearer {SPECIAL_TOKEN}", f"Basic {URL_TOKEN}", f"Token {BEARER}",
    basic(BASIC_USER, BASIC_PASSWORD) + "\x01",
], ids=["basic", "basic-wrong-password", "basic-wrong-user", "special-basic",
        "special-basic-wrong", "special-password-wrong-user", "bearer", "bearer-wrong",
        "bearer-special-token", "basic-not-base64", "token-scheme", "basic-with-ctl"])
def test_authorization_headers_never_reach_the_log(hostile: Hostile,
                                                   authorization: str) -> None:
    """Right and wrong Basic and Bearer credentials, on uploads that succeed and on ones
    refused for other reasons, leave no form of a secret in the log."""
    uid = unique()
    headers = [("host", "x"), ("authorization", authorization)]
    for method, target in (("PUT", f"/kazoo/call_recording_{uid}.wav?recording_id=r-{uid}"),
                           ("PUT", "/kazoo/unrecognized"), ("GET", "/kazoo/missing.wav"),
                           ("GET", "/v1/recordings"), ("GET", "/metrics"),
                           ("POST", "/sinch/voice"), ("PUT", "/nowhere")):
        body = hs.WAV if method == "PUT" else b"{}"
        hostile.exchange(request(method, target, body, headers=headers))
    assert not secret_leaks(hostile.server.log_path)


@given(secret=st.sampled_from(SECRETS), where=st.sampled_from(["path", "query", "header"]),
       encode=st.sampled_from(["raw", "quote", "quote_plus", "lower", "base64"]),
       junk=st.text(alphabet="ab%/?&=+~ \x01", max_size=6))
@scaled(0.3)
def test_any_secret_in_any_form_never_reaches_the_log(hostile: Hostile, secret: str,
                                                      where: str, encode: str,
                                                      junk: str) -> None:
    """A secret in any of its forms, with junk around it, anywhere in a request: its
    answer keeps the suite's properties and the log holds no form of any secret."""
    form = {"raw": secret, "quote": quote(secret, safe=""), "lower": quote(secret, safe="").lower(),
            "quote_plus": quote_plus(secret),
            "base64": base64.b64encode(secret.encode()).decode()}[encode]
    value = (quote(junk, safe="") + form).encode()
    if where == "path":
        raw = head("PUT", b"/kazoo/" + value + b"/x.wav", [("host", "x")])
    elif where == "query":
        raw = head("GET", b"/kazoo/x.wav?token=" + value, [("host", "x")])
    else:
        raw = head("GET", "/kazoo/x.wav", [("host", "x"), ("authorization", b"Basic " + value)])
    hostile.exchange(raw)  # its log line is written before the answer
    assert not secret_leaks(hostile.server.log_path)


def test_the_search_finds_a_secret(tmp_path: Path) -> None:
    """The log search is real: a line holding a secret's percent-encoded form is found."""
    probe = tmp_path / "probe.log"
    form = quote(SPECIAL_TOKEN, safe="").lower()
    assert form in secret_forms(SPECIAL_TOKEN)
    probe.write_text('{"event": "x", "detail": "' + form + '"}\n', encoding="utf-8")
    assert secret_leaks(probe)
