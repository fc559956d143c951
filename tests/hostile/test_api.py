"""The recording API, the operations routes, unknown paths and methods, under hostile
queries, ids, tokens and methods, against a real ``recsink serve``. Properties:
tests/hostile/support.py."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tests.hostile import strategies as hs
from tests.hostile.support import BEARER, Hostile, q, request

AUTHORIZATIONS = st.sampled_from([
    None, f"Bearer {BEARER}", f"Bearer {BEARER}", f"bearer {BEARER}", f"Bearer  {BEARER} ",
    "Bearer", "Bearer " + BEARER[:-1], "Basic", "Basic !!", "Basic \u00e9", "\u00e9",
    "Bearer " + "x" * 4000, f"Token {BEARER}",
])
QUERY_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "0", "-1", "1001", "1000", "1e3", "9" * 30, "1" * 5000, "\u0663",
                     "completed", "failed", "uploading", "COMPLETED", "null", "%00", "\x00",
                     "' OR 1=1 --", "*", "%", "_"]),
)


@given(params=st.lists(st.tuples(st.sampled_from(["call_id", "recording_id", "status",
                                                  "limit", "token", "other"]),
                                 QUERY_VALUES), max_size=5),
       authorization=AUTHORIZATIONS)
def test_recording_list_with_hostile_queries(hostile: Hostile,
                                             params: list[tuple[str, str]],
                                             authorization: str | None) -> None:
    """``GET /v1/recordings`` with odd, repeated, overlong or SQL-looking query values and
    hostile Authorization headers answers 200 with a list, or a JSON 400/401."""
    target = "/v1/recordings?" + "&".join(f"{q(k)}={q(v)}" for k, v in params)
    headers = [("host", "x")] + ([("authorization", authorization)] if authorization else [])
    [answer] = hostile.exchange(request("GET", target, headers=headers))
    assert answer.status in (200, 400, 401), str(answer)
    if answer.status == 200:
        assert isinstance(json.loads(answer.body)["recordings"], list)


@given(wanted=st.one_of(st.text(min_size=1, max_size=40),
                        st.sampled_from(["rec_", "rec_" + "0" * 20, "..", "%2e%2e", "%2F",
                                         "a%00b", "\u00e9", "%ff", "%", "x" * 5000])),
       encode=st.booleans(), method=st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE"]),
       data=st.data())
def test_recording_get_with_hostile_ids(hostile: Hostile, wanted: str, encode: bool,
                                        method: str, data: st.DataObject) -> None:
    """``/v1/recordings/<id>`` with ids that climb, hold NULs, escapes or raw UTF-8, or
    are overlong, under any method, answers a recording, or a JSON 404/405/400 (a DELETE
    with upload credentials, which may only read: 403)."""
    if data.draw(st.booleans()):
        wanted = data.draw(hs.escaping_names(str(hostile.workdir)))
    segment = q(wanted) if encode else wanted.replace(" ", "%20").replace("?", "%3F")
    segment = segment.replace("\r", "").replace("\n", "").replace("\t", "")
    [answer] = hostile.exchange(request(method, "/v1/recordings/" + segment,
                                        headers=[("host", "x"),
                                                 ("authorization", f"Bearer {BEARER}")]))
    allowed = (200, 400, 404, 405) + ((403,) if method == "DELETE" else ())
    assert answer.status in allowed, str(answer)


@given(path=st.sampled_from(["/healthz", "/readyz", "/metrics", "/v1", "/v1/", "/v1/recordings/",
                             "/", "/favicon.ico", "/kazoo", "/kazoo/", "/sinch", "/laml",
                             "/HEALTHZ", "/healthz/", "//healthz", "/healthz/../readyz",
                             "/%68ealthz", "/.env", "/.git/config", "/../../etc/passwd",
                             "/recsink.db", "/recsink.toml", "/server-status"]),
       method=st.one_of(hs.METHODS, st.sampled_from(["BREW", "M-SEARCH", "SEARCH"])),
       authorization=AUTHORIZATIONS, body=st.sampled_from([b"", b"x", b"{}"]))
def test_ops_unknown_paths_and_methods(hostile: Hostile, path: str, method: str,
                                       authorization: str | None, body: bytes) -> None:
    """The operations routes, unknown paths (including ones that name recsink's own files)
    and unknown methods answer JSON errors or their documented success, never a file's
    content and never a 500."""
    headers = [("host", "x")] + ([("authorization", authorization)] if authorization else [])
    [answer] = hostile.exchange(request(method, path, body, headers=headers))
    assert b"[storage" not in answer.body, "the configuration was served"
    assert not answer.body.startswith(b"SQLite format"), "the catalog was served"
