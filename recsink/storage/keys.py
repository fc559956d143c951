"""Object names from request data: ``storage.key_template`` rendered with sanitized values.

Every value that comes from a request (account id, call id, recording id, …) is reduced to one
safe path segment before it is placed in the template, so no request can name a path outside
the storage root (DESIGN.md invariant 7): ``/`` and ``\\`` never survive, nor do control
characters, ``..`` or a leading dot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

#: Longest segment a value may produce, in characters (well under NAME_MAX = 255 bytes).
MAX_SEGMENT = 120

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
    validated in :mod:`recsink.config`."""
    fields = {k: safe_segment(v) for k, v in values.items()}
    when = when.astimezone(UTC)
    fields.update(yyyy=f"{when.year:04d}", mm=f"{when.month:02d}",
                  dd=f"{when.day:02d}", hh=f"{when.hour:02d}")
    key = template.format_map(fields)
    parts = [p for p in key.split("/") if p not in ("", ".", "..")]
    return "/".join(parts)


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
