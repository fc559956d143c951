"""Object names from request data: ``storage.key_template`` rendered with sanitized values.

Every value that comes from a request (account id, call id, recording id, …) is reduced to one
safe path segment before it is placed in the template, so no request can name a path outside
the storage root (DESIGN.md invariant 7): ``/`` and ``\\`` never survive, nor do control
characters, ``..`` or a leading dot.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime

#: Longest segment a value may produce, in characters (well under NAME_MAX = 255 bytes).
MAX_SEGMENT = 120
#: Longest path segment of a rendered key, in UTF-8 bytes: a template that joins several
#: values in one segment can exceed a filesystem's NAME_MAX (255 bytes); the headroom is for
#: the ``~<n>`` of a variant (:func:`variant`).
MAX_NAME_BYTES = 200
#: Longest rendered key, in UTF-8 bytes (S3 allows 1024, with the bucket's prefix and a
#: variant's suffix).
MAX_KEY_BYTES = 768
#: What a segment is cut to when the whole key is too long, in UTF-8 bytes.
SHORT_NAME_BYTES = 48
#: Hex digits of the SHA-256 of the whole segment appended to a shortened one.
_HASH_DIGITS = 16

_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=,~-]+")


def safe_segment(value: str | None) -> str:
    """``value`` as one filesystem- and S3-safe path segment; ``_`` when nothing is left.

    Runs of characters outside ``[A-Za-z0-9._@+=,~-]`` become ``_``; leading dots are removed
    (no hidden files, no ``.``/``..``); the result is cut to :data:`MAX_SEGMENT` characters.
    """
    text = _UNSAFE.sub("_", value or "").lstrip(".")
    text = text[:MAX_SEGMENT].rstrip(".")
    return text or "_"


def render_key(template: str, values: Mapping[str, str | None], when: datetime) -> str:
    """Render ``template`` with ``values`` and the UTC date parts of ``when`` (yyyy, mm, dd,
    hh), each value sanitized by :func:`safe_segment`. The template itself is trusted config,
    validated in :mod:`recsink.config`. A path segment longer than :data:`MAX_NAME_BYTES`
    bytes, and the longest segments of a key longer than :data:`MAX_KEY_BYTES`, are
    shortened by :func:`shorten`: the same values always give the same key."""
    fields = {k: safe_segment(v) for k, v in values.items()}
    when = when.astimezone(UTC)
    fields.update(yyyy=f"{when.year:04d}", mm=f"{when.month:02d}",
                  dd=f"{when.day:02d}", hh=f"{when.hour:02d}")
    key = template.format_map(fields)
    parts = [p for p in key.split("/") if p not in ("", ".", "..")]
    parts = [shorten(p, MAX_NAME_BYTES) for p in parts]
    # Too long as a whole (many long segments): cut the longest ones, last segment last.
    order = sorted(range(len(parts)), key=lambda i: (i == len(parts) - 1, -len(parts[i])))
    for i in order:
        if _size("/".join(parts)) <= MAX_KEY_BYTES:
            break
        parts[i] = shorten(parts[i], SHORT_NAME_BYTES)
    return "/".join(parts)


def _size(text: str) -> int:
    return len(text.encode())


def shorten(segment: str, limit: int) -> str:
    """``segment`` if it is at most ``limit`` UTF-8 bytes, else cut at a character boundary
    and followed by ``-`` and 16 hex digits of the SHA-256 of the whole segment, its
    extension (``.wav``, up to 8 characters) kept: at most ``limit`` bytes, the same for the
    same segment, different for segments that differ only past the cut."""
    if _size(segment) <= limit:
        return segment
    stem, dot, ext = segment.rpartition(".")
    if not dot or not stem or len(ext) > 8 or "/" in ext:
        stem, ext = segment, ""
    suffix = "-" + hashlib.sha256(segment.encode()).hexdigest()[:_HASH_DIGITS]
    suffix += "." + ext if ext else ""
    room = limit - _size(suffix)
    cut = stem.encode()[:room].decode("utf-8", errors="ignore")
    return cut + suffix


def variant(key: str, n: int) -> str:
    """The ``n``-th alternative name for a taken ``key``: ``a/b/name~n.ext``."""
    head, _, name = key.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    name = f"{stem}~{n}.{ext}" if dot else f"{name}~{n}"
    return f"{head}/{name}" if head else name


def following(base: str, key: str) -> str:
    """The variant of ``base`` after ``key`` (``base`` itself, or one of its variants)."""
    n = 1
    while (base if n == 1 else variant(base, n)) != key:
        n += 1
        if n > 100_000:
            raise ValueError(f"{key!r} is not a variant of {base!r}")
    return variant(base, n + 1)
