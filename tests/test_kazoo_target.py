"""Kazoo request targets: ``split_target``, ``parse_target`` and ``gregorian_to_utc``
(specs/kazoo.md §2.1.1, §2.1.3, §2.2, §2.3, §5.5, §8.1, §8.4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from recsink.errors import RecsinkError
from recsink.responses import status_of
from recsink.sources.kazoo import Target, gregorian_to_utc, parse_target, split_target
from tests.conftest import ACCOUNT, CALL_ID, MEDIA_NAME, OWNER, RECORDING_ID
from tests.kazoo_wire import EX6_DOUBLED_GET_PATH, PROBE_DOC_ID, PROBE_NAME

PREFIXES = ["/kazoo", "/recordings", "/upload", "/up", "/rec"]

ENCODED_CALL_ID = "a84b4c76e66710%40pc33.atlanta.example.com"
FILE = f"call_recording_{ENCODED_CALL_ID}.mp3"
DECODED_FILE = f"call_recording_{CALL_ID}.mp3"
#: The §2.1.2 metadata query, in Kazoo's order and encoding.
QUERY = (
    "from=%2B14155550100%40acme.sip.example.com&to=1002%40acme.sip.example.com"
    "&caller_id_name=Alice%20Smith&caller_id_number=%2B14155550100"
    f"&call_id={ENCODED_CALL_ID}&cdr_id=202403-{ENCODED_CALL_ID}"
    f"&interaction_id=63877471195-5f3a9c1e&owner_id={OWNER}&account_id={ACCOUNT}"
    f"&start=63877471200&duration_ms=65432&recording_id={RECORDING_ID}"
)
EXPECTED_QUERY = {
    "from": "+14155550100@acme.sip.example.com",
    "to": "1002@acme.sip.example.com",
    "caller_id_name": "Alice Smith",
    "caller_id_number": "+14155550100",
    "call_id": CALL_ID,
    "cdr_id": f"202403-{CALL_ID}",
    "interaction_id": "63877471195-5f3a9c1e",
    "owner_id": OWNER,
    "account_id": ACCOUNT,
    "start": "63877471200",
    "duration_ms": "65432",
    "recording_id": RECORDING_ID,
}
PATH_A = Target("A", DECODED_FILE, call_id=CALL_ID, recording_id=RECORDING_ID,
                account_id=ACCOUNT, owner_id=OWNER)


def target(raw_path: str, prefixes: list[str] = PREFIXES) -> Target:
    return parse_target(*split_target(raw_path, prefixes))


# --- path A: every URL shape of §2.1.1 -------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path", "segments", "extra"),
    [
        (f"/rec/{FILE}?{QUERY}", [DECODED_FILE], {}),
        (f"/up?token=abc&recording={FILE}&{QUERY}", [],
         {"token": "abc", "recording": DECODED_FILE}),
        (f"/up?token=abc&file={FILE}&{QUERY}", [], {"token": "abc", "file": DECODED_FILE}),
        (f"/up?file={FILE}&{QUERY}", [], {"file": DECODED_FILE}),
    ],
    ids=["segment", "token-recording", "token-file", "file"],
)
def test_path_a_url_shapes_split(
    raw_path: str, segments: list[str], extra: dict[str, str]
) -> None:
    """Each §2.1.1 shape splits into the decoded file segment (if any) and the decoded query."""
    assert split_target(raw_path, PREFIXES) == (segments, {**extra, **EXPECTED_QUERY})


@pytest.mark.parametrize(
    "raw_path",
    [
        f"/rec/{FILE}?{QUERY}",
        f"/up?token=abc&recording={FILE}&{QUERY}",
        f"/up?token=abc&file={FILE}&{QUERY}",
        f"/up?file={FILE}&{QUERY}",
    ],
    ids=["segment", "token-recording", "token-file", "file"],
)
def test_path_a_url_shapes_parse(raw_path: str) -> None:
    """Each §2.1.1 shape is path A with the file name, call id and ids from the query."""
    assert target(raw_path) == PATH_A


def test_path_a_name_without_query_gives_call_id_from_the_name() -> None:
    """A bare ``call_recording_<call_id>.mp3`` (pre-4.0 shape) takes its call id from the name."""
    assert target(f"/kazoo/{FILE}") == Target("A", DECODED_FILE, call_id=CALL_ID)


@pytest.mark.parametrize("ext", ["mp3", "wav", "mp4"])
def test_path_a_extensions(ext: str) -> None:
    """The file name's extension may be mp3, wav or mp4; the call id stops before it."""
    name = f"call_recording_{CALL_ID}.{ext}"
    assert target(f"/kazoo/call_recording_{ENCODED_CALL_ID}.{ext}") == Target(
        "A", name, call_id=CALL_ID)


def test_path_a_double_dot_name() -> None:
    """The 4.3 endpoint-inbound ``call_recording_<id>..mp3`` (§2.1.3) is path A with the id
    before the double dot."""
    leg = "7d3f9a2e-2c1b-4f7e-9b8a-1e2d3c4b5a69"
    assert target(f"/recordings/call_recording_{leg}..mp3") == Target(
        "A", f"call_recording_{leg}..mp3", call_id=leg)


def test_path_a_double_dot_name_with_short_query() -> None:
    """Ex 3's short query (no owner_id, start, recording_id) gives None for the missing ids."""
    leg = "7d3f9a2e-2c1b-4f7e-9b8a-1e2d3c4b5a69"
    raw = (f"/recordings/call_recording_{leg}..mp3?from=%2B14155550100%40acme.sip.example.com"
           f"&call_id={leg}&interaction_id=63877471195-5f3a9c1e&account_id={ACCOUNT}")
    assert target(raw) == Target("A", f"call_recording_{leg}..mp3", call_id=leg,
                                 account_id=ACCOUNT)


def test_path_a_empty_query_values_are_none() -> None:
    """Empty ``owner_id=`` / ``recording_id=`` values (§8.7) give None, not empty strings."""
    raw = f"/kazoo/{FILE}?call_id=&owner_id=&account_id={ACCOUNT}&recording_id="
    assert target(raw) == Target("A", DECODED_FILE, call_id=CALL_ID, account_id=ACCOUNT)


# --- escapes inside segments and the query ---------------------------------------------


def test_call_id_with_percent_40_decodes() -> None:
    """``%40`` in the file name decodes to ``@`` in the segment and the call id."""
    segments, _ = split_target(f"/kazoo/{FILE}", PREFIXES)
    assert segments == [DECODED_FILE]


def test_percent_2f_stays_inside_its_segment() -> None:
    """A ``%2F`` in a Call-ID decodes to ``/`` inside its one segment (§8.4), not a new one."""
    raw = "/kazoo/call_recording_abc%2Fdef%40host.mp3?call_id=abc%2Fdef%40host"
    segments, query = split_target(raw, PREFIXES)
    assert segments == ["call_recording_abc/def@host.mp3"]
    assert query == {"call_id": "abc/def@host"}
    assert parse_target(segments, query) == Target(
        "A", "call_recording_abc/def@host.mp3", call_id="abc/def@host")


def test_percent_2f_in_path_b_segment_keeps_segment_count() -> None:
    """A ``%2F`` in a path-B recording id does not shift the account/owner segments."""
    raw = f"/kazoo/{ACCOUNT}/{OWNER}/rec%2Fid/{MEDIA_NAME}"
    assert target(raw) == Target("B", MEDIA_NAME, recording_id="rec/id",
                                 account_id=ACCOUNT, owner_id=OWNER)


def test_raw_utf8_in_query_decodes() -> None:
    """A raw non-ASCII caller name (``José``, §8.1) arrives intact in the query."""
    _, query = split_target(f"/kazoo/{FILE}?caller_id_name=José%20Smith&call_id=x", PREFIXES)
    assert query["caller_id_name"] == "José Smith"


def test_percent_encoded_utf8_in_query_decodes() -> None:
    """``%C3%A9`` in the query decodes as UTF-8 to ``é``."""
    _, query = split_target(f"/kazoo/{FILE}?caller_id_name=Jos%C3%A9", PREFIXES)
    assert query["caller_id_name"] == "José"


def test_plus_in_query_is_a_space() -> None:
    """``+`` in the query is a space (form encoding of the §5.5 probe GET); ``%2B`` a plus."""
    _, query = split_target("/kazoo/x.mp3?content=some+random+content%3A+c4&n=%2B1", PREFIXES)
    assert query == {"content": "some random content: c4", "n": "+1"}


def test_plus_in_path_stays_a_plus() -> None:
    """``+`` in a path segment is not a space."""
    segments, _ = split_target("/kazoo/call_recording_a+b.mp3", PREFIXES)
    assert segments == ["call_recording_a+b.mp3"]


def test_first_query_value_wins() -> None:
    """A repeated query key keeps its first value."""
    _, query = split_target("/kazoo/x.mp3?a=1&a=2&b=", PREFIXES)
    assert query == {"a": "1", "b": ""}


@pytest.mark.parametrize(
    "raw_path",
    [
        "/kazoo/call_recording_x.mp3?caller_id_name=Jos%E9",
        "/kazoo/call_recording_x.mp3?caller_id_name=%C3",
        "/kazoo/call_recording_%FF.mp3",
        "/kazoo/call_recording_x.mp3?%FF=1",
    ],
    ids=["latin1-value", "truncated-sequence", "path", "key"],
)
def test_invalid_percent_utf8_is_bad_target(raw_path: str) -> None:
    """Percent-escapes that are not UTF-8 (in path or query) raise 400 ``bad_target``."""
    with pytest.raises(RecsinkError) as info:
        split_target(raw_path, PREFIXES)
    assert (status_of(info.value), info.value.code) == (400, "bad_target")


# --- path B (storage plan) ----------------------------------------------------------------


def test_path_b_with_owner() -> None:
    """``<account>/<owner>/<recording_id>/<media_name>`` (Ex 4) is path B with all four ids."""
    assert target(f"/kazoo/{ACCOUNT}/{OWNER}/{RECORDING_ID}/{MEDIA_NAME}") == Target(
        "B", MEDIA_NAME, recording_id=RECORDING_ID, account_id=ACCOUNT, owner_id=OWNER)


def test_path_b_without_owner() -> None:
    """Without an owner the segment disappears: ``<account>/<recording_id>/<media_name>``."""
    assert target(f"/kazoo/{ACCOUNT}/{RECORDING_ID}/{MEDIA_NAME}") == Target(
        "B", MEDIA_NAME, recording_id=RECORDING_ID, account_id=ACCOUNT)


@pytest.mark.parametrize("owner", [True, False], ids=["owner", "no-owner"])
def test_path_b_with_folder_prefix(owner: bool) -> None:
    """A ``folder_base_path`` before the ids (§2.2) does not change what path B reads."""
    middle = f"{OWNER}/" if owner else ""
    raw = f"/kazoo/calls/2024/{ACCOUNT}/{middle}{RECORDING_ID}/{MEDIA_NAME}"
    assert target(raw) == Target("B", MEDIA_NAME, recording_id=RECORDING_ID,
                                 account_id=ACCOUNT, owner_id=OWNER if owner else None)


@pytest.mark.parametrize("owner", [True, False], ids=["owner", "no-owner"])
def test_path_b_media_named_like_path_a(owner: bool) -> None:
    """A path-B upload whose media name is ``call_recording_<id>.<ext>`` under
    ``<account>/[<owner>/]<recording_id>/`` is path B with the path's ids."""
    middle = f"{OWNER}/" if owner else ""
    assert target(f"/kazoo/{ACCOUNT}/{middle}{RECORDING_ID}/{FILE}") == Target(
        "B", DECODED_FILE, recording_id=RECORDING_ID, account_id=ACCOUNT,
        owner_id=OWNER if owner else None)


def test_path_a_with_its_query_below_hex_segments_stays_path_a() -> None:
    """A path-A name in the last segment with path A's metadata query stays path A even
    when the configured url's segments look like path B's."""
    assert target(f"/kazoo/{ACCOUNT}/folder/{FILE}?{QUERY}") == PATH_A


def test_path_b_hex_ids_are_lowercased() -> None:
    """Upper-case hex account and owner ids are stored lower-case."""
    raw = f"/kazoo/{ACCOUNT.upper()}/{OWNER.upper()}/{RECORDING_ID}/{MEDIA_NAME}"
    assert target(raw) == Target("B", MEDIA_NAME, recording_id=RECORDING_ID,
                                 account_id=ACCOUNT, owner_id=OWNER)


def test_path_b_probe_upload() -> None:
    """Ex 6's probe upload path is path B named ``<hex>_test_credentials_file.txt``."""
    assert target(f"/kazoo/{ACCOUNT}/{PROBE_DOC_ID}/{PROBE_NAME}") == Target(
        "B", PROBE_NAME, recording_id=PROBE_DOC_ID, account_id=ACCOUNT)


def test_doubled_segment_probe_get_path() -> None:
    """The ≥ 4.3.106 probe GET (§5.5), upload path with its segments repeated plus a form
    query, resolves like the upload path."""
    segments, query = split_target(EX6_DOUBLED_GET_PATH, PREFIXES)
    assert segments == [ACCOUNT, PROBE_DOC_ID, PROBE_NAME] * 2
    assert query["content"] == "some random content: c4ca4238a0b923820dcc509a6f75849b"
    assert query["id"] == PROBE_DOC_ID
    assert parse_target(segments, query) == Target(
        "B", PROBE_NAME, recording_id=PROBE_DOC_ID, account_id=ACCOUNT)


def test_doubled_segment_get_path_with_owner() -> None:
    """A doubled path with an owner segment resolves to the same ids as the upload."""
    once = f"{ACCOUNT}/{OWNER}/{RECORDING_ID}/{MEDIA_NAME}"
    assert target(f"/kazoo/{once}/{once}") == target(f"/kazoo/{once}")


# --- path C and unrecognized paths ------------------------------------------------------


LEG = "7d3f9a2e-2c1b-4f7e-9b8a-1e2d3c4b5a69"


@pytest.mark.parametrize(
    ("tail", "name", "call_id"),
    [
        (f"{LEG}.mp3", f"{LEG}.mp3", LEG),
        (f"{LEG}.wav", f"{LEG}.wav", LEG),
        (f"{ENCODED_CALL_ID}.mp3", f"{CALL_ID}.mp3", CALL_ID),
    ],
)
def test_path_c(tail: str, name: str, call_id: str) -> None:
    """``<call_id>.<ext>`` (record_caller, §2.3) is path C with the call id before the
    extension."""
    assert target(f"/kazoo/{tail}") == Target("C", name, call_id=call_id)


@pytest.mark.parametrize(
    "raw_path",
    ["/kazoo", "/kazoo/", "/kazoo/foo/bar", "/kazoo/noextension", "/kazoo/file.toolong",
     "/kazoo?token=abc", "/kazoo/a/b?recording=not_a_recording.mp3x"],
)
def test_unrecognized_path(raw_path: str) -> None:
    """A target that is none of A, B, C raises 400 ``unrecognized_path``."""
    with pytest.raises(RecsinkError) as info:
        target(raw_path)
    assert (status_of(info.value), info.value.code) == (400, "unrecognized_path")


# --- prefix stripping ------------------------------------------------------------------


def test_longest_prefix_wins() -> None:
    """With ``/kazoo`` and ``/kazoo/v2`` both configured, ``/kazoo/v2/…`` strips ``/kazoo/v2``
    whatever the configured order."""
    for prefixes in (["/kazoo", "/kazoo/v2"], ["/kazoo/v2", "/kazoo"]):
        segments, _ = split_target("/kazoo/v2/call_recording_x.mp3", prefixes)
        assert segments == ["call_recording_x.mp3"]


def test_shorter_prefix_still_matches_other_paths() -> None:
    """``/kazoo/v3/…`` is below ``/kazoo`` only, so ``v3`` stays a segment."""
    segments, _ = split_target("/kazoo/v3/call_recording_x.mp3", ["/kazoo/v2", "/kazoo"])
    assert segments == ["v3", "call_recording_x.mp3"]


def test_prefix_with_no_tail() -> None:
    """``/upload?token=…&recording=…`` (Ex 2) has no segments left after its prefix."""
    segments, query = split_target(f"/upload?token=s3cr3t&recording={FILE}", PREFIXES)
    assert segments == []
    assert query == {"token": "s3cr3t", "recording": DECODED_FILE}


def test_prefix_matches_whole_segments_only() -> None:
    """``/uploads/…`` is not below the ``/upload`` prefix: nothing is stripped."""
    segments, _ = split_target("/uploads/call_recording_x.mp3", ["/upload"])
    assert segments == ["uploads", "call_recording_x.mp3"]


def test_empty_segments_are_dropped() -> None:
    """Doubled and trailing slashes do not produce empty segments."""
    segments, _ = split_target(f"/kazoo//{ACCOUNT}//{RECORDING_ID}/{MEDIA_NAME}/", PREFIXES)
    assert segments == [ACCOUNT, RECORDING_ID, MEDIA_NAME]


# --- gregorian_to_utc ------------------------------------------------------------------

START = datetime(2024, 3, 12, 14, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", [63877471200, "63877471200", 63877471200.0])
def test_gregorian_seconds_to_utc(value: Any) -> None:
    """Kazoo's ``start`` 63877471200 (Gregorian seconds) is 2024-03-12T14:00:00Z."""
    result = gregorian_to_utc(value)
    assert result == START
    assert result is not None
    assert result.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", [1710252000, "1710252000"])
def test_unix_seconds_pass_through(value: Any) -> None:
    """Values below the Unix epoch in Gregorian seconds are taken as Unix seconds."""
    assert gregorian_to_utc(value) == START


def test_gregorian_unix_epoch() -> None:
    """62167219200 Gregorian seconds is the Unix epoch."""
    assert gregorian_to_utc(62167219200) == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "value", [None, "", "   ", "abc", "12.5", "63877471200x", [], {}, "9" * 40])
def test_gregorian_empty_or_garbage_is_none(value: Any) -> None:
    """Missing, empty, non-numeric or out-of-range ``start`` values give None."""
    assert gregorian_to_utc(value) is None
