"""Hostile Kazoo uploads and GET probes against a real ``recsink serve``: names that try to
leave the storage root in every field that ends up in a storage key, bodies that start like
WAV or MP3 but are not, broken multipart bodies and hostile credentials. Properties:
tests/hostile/support.py; here also: a 2xx upload stored exactly the bytes sent, and a GET
only ever returns the bytes of a stored recording."""

from __future__ import annotations

import base64
import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ACCOUNT, OWNER
from tests.hostile import strategies as hs
from tests.hostile.support import (
    BASIC,
    BEARER,
    URL_TOKEN,
    Answer,
    Hostile,
    q,
    request,
    unique,
)

CREDENTIALS = st.sampled_from(["query", "query", "path", "basic", "bearer", "none",
                               "bad_basic", "bad_bearer", "bad_token", "garbage"])
SHAPES = st.sampled_from(["a_name", "a_query", "a_recording_param", "b", "b_owner", "c"])
#: Fields whose value reaches the storage key, and where each shape carries them.
FIELDS = st.sampled_from(["call_id", "recording_id", "account_id", "owner_id", "name"])


def credentials(style: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(path prefix segment, query pair, headers) for a credential style."""
    headers = [("host", "rec.example.com")]
    if style == "basic":
        headers.append(("authorization", BASIC))
    elif style == "bearer":
        headers.append(("authorization", f"Bearer {BEARER}"))
    elif style == "bad_basic":
        headers.append(("authorization", "Basic " + base64.b64encode(b"kazoo:nope").decode()))
    elif style == "bad_bearer":
        headers.append(("authorization", "Bearer " + BEARER[:-1]))
    elif style == "garbage":
        headers.append(("authorization", "Basic \u00e9\u00e9=="))
    segment = f"/{URL_TOKEN}" if style == "path" else ""
    token = {"query": f"token={URL_TOKEN}", "bad_token": "token=nope"}.get(style, "")
    return segment, token, headers


def upload_target(shape: str, field: str, name: str, uid: str, segment: str,
                  token: str) -> str:
    """A Kazoo upload target of ``shape`` whose ``field`` is ``name`` (percent-encoded),
    the rest unique to this example."""
    value = q(name)
    call_id = value if field == "call_id" else uid
    recording_id = value if field == "recording_id" else f"r-{uid}"
    account = value if field == "account_id" else ACCOUNT
    owner = value if field == "owner_id" else OWNER
    ext = value if field == "name" else "wav"
    query = [token] if token else []
    if shape == "a_name":
        query += [f"recording_id={recording_id}", f"account_id={account}", f"owner_id={owner}"]
        return f"/kazoo{segment}/call_recording_{call_id}.{ext}?" + "&".join(query)
    if shape == "a_query":
        query += [f"call_id={call_id}", f"recording_id={recording_id}",
                  f"account_id={account}", f"owner_id={owner}"]
        return f"/kazoo{segment}/call_recording_{uid}.{ext}?" + "&".join(query)
    if shape == "a_recording_param":
        query += [f"recording=call_recording_{call_id}.{ext}", f"recording_id={recording_id}",
                  f"account_id={account}"]
        return f"/kazoo{segment}?" + "&".join(query)
    if shape in ("b", "b_owner"):
        owner_segment = f"/{owner}" if shape == "b_owner" else ""
        media = value if field in ("name", "call_id") else f"{uid}.mp3"
        return f"/kazoo{segment}/{account}{owner_segment}/{recording_id}/{media}" + (
            f"?{token}" if token else "")
    return f"/kazoo{segment}/{call_id}.{ext}" + (f"?{token}" if token else "")


def check_stored(hostile: Hostile, answer: Answer, body: bytes) -> None:
    """A 201 answer describes a new recording whose stored bytes are ``body``."""
    if answer.status != 201:
        return
    record = json.loads(answer.body)
    if record["status"] == "completed" and record["format"] != "txt":
        assert record["sha256"] == hashlib.sha256(body).hexdigest(), record
        assert record["byte_size"] == len(body), record


@given(shape=SHAPES, field=FIELDS, credential=CREDENTIALS,
       method=st.sampled_from(["PUT", "POST"]), data=st.data())
def test_escaping_names_in_raw_uploads(hostile: Hostile, shape: str, field: str,
                                       credential: str, method: str, data: st.DataObject) -> None:
    """``..``, percent-encoded and backslash climbs, absolute paths, NULs and overlong names
    in the call id, recording id, account and owner ids and the file name of path A, B and
    C uploads never put a file outside the storage root, never answer 500, and a refusal
    (bad credentials, unrecognised path) is JSON."""
    uid = unique()
    name = data.draw(hs.escaping_names(str(hostile.workdir))) + uid
    segment, token, headers = credentials(credential)
    target = upload_target(shape, field, name, uid, segment, token)
    body = data.draw(st.sampled_from([hs.WAV, hs.MP3]))
    [answer] = hostile.exchange(request(method, target, body, headers=headers,
                                        content_type="audio/wav"))
    check_stored(hostile, answer, body)
    if credential in ("none", "bad_basic", "bad_bearer", "bad_token", "garbage"):
        assert answer.status in (400, 401), str(answer)


@given(body=hs.bogus_audio(), md5=st.sampled_from(["none", "none", "right", "wrong", "bad"]),
       shape=st.sampled_from(["a_name", "b", "c"]))
def test_bogus_audio_bodies(hostile: Hostile, body: bytes, md5: str, shape: str) -> None:
    """Bodies that start like WAV or MP3 but are truncated or bogus (RIFF with a wrong size,
    a fmt chunk with zero channels or rate, ID3 with a huge tag size, random MPEG frame
    headers) are stored exactly as sent or refused (415, 400) with JSON, never a 500."""
    headers = [("host", "rec.example.com"), ("authorization", BASIC)]
    digest = hashlib.md5(body).digest()
    if md5 != "none":
        value = {"right": base64.b64encode(digest).decode(),
                 "wrong": base64.b64encode(digest[::-1]).decode(), "bad": "not-base64!"}[md5]
        headers.append(("content-md5", value))
    target = upload_target(shape, "call_id", unique(), unique(), "", "")
    [answer] = hostile.exchange(request("PUT", target, body, headers=headers,
                                        content_type="audio/wav"))
    check_stored(hostile, answer, body)
    assert answer.status in (200, 201, 400, 415), str(answer)


@given(field=st.sampled_from(["call_id", "id", "account_id", "owner_id", "Account-ID"]),
       shape=st.sampled_from(["b", "b", "b_owner", "a_name"]),
       media=st.one_of(st.sampled_from([hs.WAV, hs.MP3]), hs.bogus_audio()), data=st.data())
def test_broken_multipart_uploads(hostile: Hostile, field: str, shape: str, media: bytes,
                                  data: st.DataObject) -> None:
    """Multipart uploads with a missing, wrong, quoted or overlong boundary, truncated
    parts, no final boundary, broken part headers, base64 media (valid or not), and JSON
    metadata that is broken or names a file outside the root in any of its id fields: a
    JSON refusal or the media part stored exactly, never a 500 or a partial file."""
    uid = unique()
    name = data.draw(hs.escaping_names(str(hostile.workdir))) + uid
    meta = data.draw(hs.metadata(uid, field, name))
    content_type, body, recording = data.draw(hs.multipart(meta, media))
    target = upload_target(shape, "call_id", uid, uid, "", f"token={URL_TOKEN}")
    [answer] = hostile.exchange(request("POST", target, body, content_type=content_type))
    check_stored(hostile, answer, recording)


@given(shape=SHAPES, field=FIELDS, method=st.sampled_from(["GET", "GET", "HEAD"]),
       extra=st.lists(st.tuples(st.sampled_from(["range", "if-range", "if-match",
                                                  "if-none-match", "if-modified-since",
                                                  "if-unmodified-since", "accept-encoding"]),
                                hs.HEADER_VALUES), max_size=3),
       data=st.data())
def test_get_probe_serves_only_stored_recordings(
    hostile: Hostile, shape: str, field: str, method: str,
    extra: list[tuple[str, str]], data: st.DataObject,
) -> None:
    """GET and HEAD on upload paths (the storage-plan probe, specs/kazoo.md §5.5) whose
    names climb out of the root, with Range and conditional headers, answer JSON errors
    or the exact bytes of a stored recording: never a file outside the root, never a 500."""
    stored_uid = unique()
    stored = request("PUT", upload_target("b", "call_id", stored_uid, stored_uid, "", ""),
                     hs.WAV, headers=[("host", "x"), ("authorization", BASIC)],
                     content_type="audio/wav")
    assert hostile.exchange(stored)[0].status == 201
    name = data.draw(hs.escaping_names(str(hostile.workdir)))
    target = upload_target(shape, field, name, data.draw(st.sampled_from([unique(), stored_uid])),
                           "", f"token={URL_TOKEN}")
    if data.draw(st.booleans()):
        target = upload_target("b", "call_id", stored_uid, stored_uid, "",
                               f"token={URL_TOKEN}")
    [answer] = hostile.exchange(request(method, target, headers=[("host", "x"), *extra]))
    if answer.status == 200 and method == "GET":
        digest = hashlib.sha256(answer.body).hexdigest()
        assert digest in hostile.verified.values(), str(answer)


NUMBERS = st.one_of(
    st.integers(), st.floats(), st.sampled_from([
        "1e999", "-1e999", "NaN", "9" * 30, "1" * 5000, "-1", "0x10", "1_000", "\u0663",
        "63877471200", "99999999999999", "253402300800", "-62135596800", "", "null"]))


@given(start=NUMBERS, duration=NUMBERS, via=st.sampled_from(["query", "json"]),
       body=st.sampled_from([hs.MP3, hs.WAV, hs.WAV[:60]]))
def test_hostile_numbers_in_metadata(hostile: Hostile, start: object, duration: object,
                                     via: str, body: bytes) -> None:
    """Out-of-range, infinite, non-numeric or overlong ``start`` and ``duration_ms`` (in the
    path-A query or the JSON metadata part) are ignored or refused, never a 500: a recording
    whose file has no readable duration keeps the sender's only when it is believable."""
    uid = unique()
    if via == "query":
        target = (f"/kazoo/call_recording_{uid}.wav?token={URL_TOKEN}&recording_id=r-{uid}"
                  f"&start={q(str(start))}&duration_ms={q(str(duration))}")
        raw = request("PUT", target, body, content_type="audio/wav")
    else:
        # Python's JSON writes infinities and NaN as the bare words a hostile sender would.
        meta = json.dumps({"id": f"r-{uid}", "call_id": uid, "account_id": ACCOUNT,
                           "start": start, "duration_ms": duration}).encode()
        content_type, mp, _ = hs.multipart_plain(meta, body)
        target = upload_target("b", "call_id", uid, uid, "", f"token={URL_TOKEN}")
        raw = request("POST", target, mp, content_type=content_type)
    [answer] = hostile.exchange(raw)
    check_stored(hostile, answer, body)
