"""Object names from request data: ``safe_segment``, ``render_key``, ``variant``
(DESIGN.md invariant 7: nothing is written outside the storage root)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import PurePosixPath

import pytest

from recsink.config import StorageSettings
from recsink.storage.keys import MAX_SEGMENT, render_key, safe_segment, variant

SAFE = re.compile(r"[A-Za-z0-9._@+=,~-]+")
WHEN = datetime(2024, 3, 12, 14, 5, 6, tzinfo=UTC)
DEFAULT_TEMPLATE = StorageSettings().key_template
#: Every variable a key template may use except the date parts.
VALUE_FIELDS = ("account_id", "owner_id", "call_id", "recording_id", "id", "source", "ext",
                "sha256")

#: Values a request could put into a key, chosen to escape the root or break a filesystem.
NASTY = [
    "..", "../", "../../etc/passwd", "/etc/passwd", "/", "//", ".", "...", ".hidden",
    "..\\..\\windows", "\\\\server\\share", "a/../../b", "a/./b", "./a", "~/x", "~",
    "a\x00b", "\x00", "\n", "a\r\nb", "\t", "\x1b[31m", "\x7f", "José", "日本語", "🎙️",
    "\u202e", "\u2215etc\u2215passwd", "\uff0e\uff0e", "%2e%2e%2f", "{account_id}", "{0}",
    "con", "a" * 1000, "." * 300, "/" * 300, ".a" * 200, "", None, " ", "a b", "a:b",
]


def assert_safe(segment: str) -> None:
    assert SAFE.fullmatch(segment), segment
    assert not segment.startswith(".")
    assert segment not in (".", "..")
    assert len(segment) <= MAX_SEGMENT


# --- safe_segment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("../", "_"),
        ("..", "_"),
        (".", "_"),
        ("/etc/passwd", "_etc_passwd"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("a\\b", "a_b"),
        ("..\\..\\x", "_.._x"),
        ("a\x00b", "a_b"),
        ("a\r\n\tb", "a_b"),
        ("\x1b[0m", "_0m"),
        (".hidden", "hidden"),
        ("...x", "x"),
        ("x.", "x"),
        ("José", "Jos_"),
        ("日本語", "_"),
        ("", "_"),
        (None, "_"),
        ("a84b4c76e66710@pc33.atlanta.example.com", "a84b4c76e66710@pc33.atlanta.example.com"),
        ("202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9", "202403-0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
        ("+14155550100", "+14155550100"),
        ("a=b,c~d", "a=b,c~d"),
        ("a b", "a_b"),
    ],
)
def test_safe_segment_values(value: str | None, expected: str) -> None:
    """Unsafe runs become one ``_``, leading/trailing dots go, safe ids pass unchanged."""
    assert safe_segment(value) == expected


@pytest.mark.parametrize("value", NASTY)
def test_safe_segment_is_always_one_safe_segment(value: str | None) -> None:
    """Whatever the value, the result is a non-empty single segment of safe characters with no
    leading dot, never ``.`` or ``..``, at most MAX_SEGMENT long."""
    assert_safe(safe_segment(value))


def test_safe_segment_cuts_long_values() -> None:
    """A very long value is cut to MAX_SEGMENT characters."""
    assert safe_segment("a" * 1000) == "a" * MAX_SEGMENT
    assert safe_segment("b" * MAX_SEGMENT) == "b" * MAX_SEGMENT


def test_safe_segment_cut_does_not_end_in_a_dot() -> None:
    """A cut that lands after a dot drops the trailing dot."""
    assert safe_segment("a" * (MAX_SEGMENT - 1) + "." + "z" * 50) == "a" * (MAX_SEGMENT - 1)


def test_safe_segment_only_dots_and_slashes_is_placeholder() -> None:
    """A value made only of dots, or only of slashes, is ``_``."""
    assert safe_segment("." * 300) == "_"
    assert safe_segment("/" * 300) == "_"


# --- render_key ------------------------------------------------------------------------


def test_render_key_default_template() -> None:
    """The default template gives ``<account>/<yyyy>/<mm>/<dd>/<recording_id>.<ext>``."""
    key = render_key(DEFAULT_TEMPLATE, {"account_id": "3a1b", "recording_id": "202403-0a1b",
                                        "ext": "mp3"}, WHEN)
    assert key == "3a1b/2024/03/12/202403-0a1b.mp3"


def test_render_key_date_parts_are_zero_padded() -> None:
    """yyyy, mm, dd and hh are zero-padded from ``when``."""
    key = render_key("{yyyy}/{mm}/{dd}/{hh}/{id}.{ext}", {"id": "x", "ext": "wav"},
                     datetime(987, 1, 2, 3, tzinfo=UTC))
    assert key == "0987/01/02/03/x.wav"


def test_render_key_missing_value_is_placeholder() -> None:
    """A None or empty value renders as ``_``, keeping the key's shape."""
    key = render_key(DEFAULT_TEMPLATE, {"account_id": None, "recording_id": "", "ext": "mp3"},
                     WHEN)
    assert key == "_/2024/03/12/_.mp3"


def test_render_key_values_cannot_override_date_parts() -> None:
    """A value named like a date part does not replace the date from ``when``."""
    key = render_key("{yyyy}/{id}.{ext}", {"yyyy": "..", "id": "x", "ext": "mp3"}, WHEN)
    assert key == "2024/x.mp3"


def test_render_key_braces_in_values_are_not_expanded() -> None:
    """A value holding ``{…}`` is data, not a template field."""
    key = render_key("{id}.{ext}", {"id": "{account_id}", "ext": "mp3"}, WHEN)
    assert key == "_account_id_.mp3"


TEMPLATES = [
    DEFAULT_TEMPLATE,
    "{source}/{account_id}/{owner_id}/{call_id}/{recording_id}-{id}-{sha256}.{ext}",
    "{call_id}{recording_id}/{id}.{ext}",
    "{yyyy}/{mm}/{dd}/{hh}/{call_id}.{ext}",
    "{ext}",
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("value", NASTY)
def test_render_key_stays_under_the_root(template: str, value: str | None) -> None:
    """Whatever the values, the key is relative, has no empty, ``.`` or ``..`` segment, no
    backslash or control character, and resolves inside the storage root."""
    key = render_key(template, dict.fromkeys(VALUE_FIELDS, value), WHEN)
    assert key
    assert not key.startswith("/")
    parts = key.split("/")
    assert all(p not in ("", ".", "..") for p in parts), key
    assert all(SAFE.fullmatch(p) for p in parts), key
    root = PurePosixPath("/srv/recordings")
    joined = root / key
    assert ".." not in joined.parts
    assert joined.is_relative_to(root)
    assert joined != root


@pytest.mark.parametrize("template", TEMPLATES)
def test_render_key_mixed_nasty_values(template: str) -> None:
    """Different nasty values in every field at once still give a key under the root."""
    values = dict(zip(VALUE_FIELDS, NASTY[: len(VALUE_FIELDS)], strict=True))
    key = render_key(template, values, WHEN)
    assert not key.startswith("/")
    assert all(p not in ("", ".", "..") for p in key.split("/")), key


# --- variant ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "n", "expected"),
    [
        ("acct/2024/03/12/rec.mp3", 1, "acct/2024/03/12/rec~1.mp3"),
        ("acct/2024/03/12/rec.mp3", 12, "acct/2024/03/12/rec~12.mp3"),
        ("rec.wav", 2, "rec~2.wav"),
        ("a/b/rec", 3, "a/b/rec~3"),
        ("rec", 1, "rec~1"),
        ("a.d/b/rec", 1, "a.d/b/rec~1"),
        ("a/rec.tar.gz", 1, "a/rec.tar~1.gz"),
        ("a/a84b@pc33.atlanta.example.com.mp3", 1, "a/a84b@pc33.atlanta.example.com~1.mp3"),
    ],
)
def test_variant_names(key: str, n: int, expected: str) -> None:
    """The n-th variant inserts ``~n`` before the last extension of the last segment only."""
    assert variant(key, n) == expected


def test_variants_are_distinct_and_keep_directory() -> None:
    """Successive variants differ from the key and each other, in the same directory."""
    key = "acct/2024/03/12/rec.mp3"
    names = [variant(key, n) for n in range(1, 6)]
    assert len({key, *names}) == 6
    assert all(name.rpartition("/")[0] == "acct/2024/03/12" for name in names)
    assert all(name.endswith(".mp3") for name in names)
